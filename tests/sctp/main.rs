//! SCTP end to end (issue 8), with the real binaries and, for interoperation, RSPLIB's
//! (Debian's `rsplib-registrar` and `rsplib-tools`): rsp over TLS/SCTP, two `enrpd`s
//! peering over ENRP/TLS/SCTP, a multi-homed PE, RSPLIB's `rspserver` and `rspterminal`
//! through `enrpd`'s legacy listener, and `rsp pe` registered with `rspregistrar`.
//!
//! These machines' kernels have no SCTP: CI runs this binary inside a qemu guest that has
//! (`ci/sctp-lab/test test -p rsp-e2e --test sctp`). Where SCTP is missing, every test
//! says so and passes without running; RSPLIB tests likewise without RSPLIB. With
//! `RSP_REQUIRE_SCTP=1` (set by the guest harness) a missing SCTP fails instead.
//!
//! RSPLIB's PEs leave loopback addresses out of what they register, so the guest has
//! 192.0.2.1 on `lo`, and RSPLIB programs are pointed at it.

#[path = "../common/binaries.rs"]
mod binaries;
mod capture;

pub(crate) use binaries::{admin_token, bin, run_ok, serving};

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod enrp_legacy;

/// Wall-clock deadlines for waiting on real processes (this is a driver, not a core).
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Unix time in milliseconds, for the admin API's `since_ms`.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis()
}

/// The documentation address the guest adds to `lo` (RSPLIB needs a non-loopback one).
pub(crate) const DOC_ADDR: &str = "192.0.2.1";
/// The guest's second documentation address on `lo` (multi-homing).
pub(crate) const DOC_ADDR_2: &str = "192.0.2.2";

/// Whether SCTP (and the documentation address) is here; says why not otherwise.
pub(crate) fn sctp_here() -> bool {
    let ok = asap::transport::sctp::available() && std::net::UdpSocket::bind((DOC_ADDR, 0)).is_ok();
    if !ok {
        assert!(
            std::env::var_os("RSP_REQUIRE_SCTP").is_none(),
            "RSP_REQUIRE_SCTP is set but this host has no SCTP or no {DOC_ADDR}"
        );
        eprintln!(
            "skipped: no kernel SCTP (or no {DOC_ADDR} on lo) here; run it in the guest: ci/sctp-lab/test test -p rsp-e2e --test sctp"
        );
    }
    ok
}

pub(crate) fn rsplib_here() -> bool {
    let ok = Command::new("rspregistrar")
        .arg("-help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("RSP_REQUIRE_SCTP").is_none(),
            "RSP_REQUIRE_SCTP is set but RSPLIB (rsplib-registrar, rsplib-tools) is missing"
        );
        eprintln!("skipped: RSPLIB is not installed (apt install rsplib-registrar rsplib-tools)");
    }
    ok
}

/// A child killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PKI and registrar data directories in a temporary directory.
pub(crate) struct Lab {
    dir: tempfile::TempDir,
    /// The NSS key log `enrpd run` and `rsp` write (`SSLKEYLOGFILE`), if any.
    key_log: Option<PathBuf>,
}

/// A running `enrpd` and where it serves.
pub(crate) struct Registrar {
    _proc: Proc,
    /// The "serving" line it printed.
    pub(crate) line: String,
    pub(crate) admin: String,
}

impl Registrar {
    /// The SCTP endpoint printed after `what` ("ASAP over TLS/SCTP on sctp:…").
    pub(crate) fn sctp(&self, what: &str) -> String {
        let at = self
            .line
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{what} on ")))
            .unwrap_or_else(|| panic!("no {what} in {:?}", self.line));
        at.trim().to_owned()
    }
}

impl Lab {
    pub(crate) fn new() -> Self {
        let lab = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            key_log: None,
        };
        lab.pki(&["init", "--trust-domain", "acme.test"]);
        lab.pki(&["issue", "pe", "echo-1"]);
        lab.pki(&["issue", "pu", "client-1"]);
        lab
    }

    /// From now on, `enrpd run` and `rsp` write their TLS session keys to `key_log`.
    pub(crate) fn log_keys(&mut self, key_log: &Path) {
        self.key_log = Some(key_log.to_owned());
    }

    /// `cmd` with `SSLKEYLOGFILE` when keys are logged.
    fn keys(&self, cmd: &mut Command) {
        if let Some(path) = &self.key_log {
            cmd.env(trust::KEY_LOG_ENV, path);
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn pki(&self, args: &[&str]) {
        run_ok(
            Command::new(bin("rsp-pki"))
                .arg("--dir")
                .arg(self.path("pki"))
                .args(args),
        );
    }

    /// A registrar certificate and `enrpd init` into `data`; returns the admin token.
    pub(crate) fn init(&self, name: &str, data: &str) -> String {
        self.pki(&["issue", "registrar", name, "--ip", "127.0.0.1"]);
        let out = run_ok(
            Command::new(bin("enrpd"))
                .arg("init")
                .arg("--pki")
                .arg(self.path("pki"))
                .args(["--name", name, "--data"])
                .arg(self.path(data)),
        );
        admin_token(&out)
    }

    /// `enrpd run` on `data` with SCTP on, everything on free loopback ports, and `extra`.
    pub(crate) fn start(&self, data: &str, extra: &[&str]) -> Registrar {
        let mut cmd = Command::new(bin("enrpd"));
        self.keys(&mut cmd);
        let mut child = cmd
            .arg("run")
            .arg("--data")
            .arg(self.path(data))
            .args(["--sctp", "on", "--allow-loopback"])
            .args([
                "--asap-listen",
                "127.0.0.1:0",
                "--enrp-listen",
                "127.0.0.1:0",
            ])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .env("ENRPD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn enrpd");
        let line = serving(&mut child).line;
        let admin = line
            .split_once("https://")
            .and_then(|(_, rest)| rest.split(',').next())
            .unwrap_or_else(|| panic!("no admin API in {line:?}"))
            .trim()
            .to_owned();
        Registrar {
            _proc: Proc(child),
            line,
            admin,
        }
    }

    /// `rsp …` with this lab's CA.
    pub(crate) fn rsp(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("rsp"));
        cmd.args(args)
            .arg("--ca")
            .arg(self.path("pki/ca.pem"))
            .current_dir(self.dir.path());
        self.keys(&mut cmd);
        cmd
    }

    /// A namespace through the admin API, with curl as an operator would.
    pub(crate) fn create_namespace(&self, registrar: &Registrar, token: &str, name: &str) {
        run_ok(
            self.admin(registrar, token, "/v1/namespaces")
                .args(["-H", "Content-Type: application/json", "-X", "POST"])
                .args(["-d", &format!("{{\"name\":\"{name}\"}}")]),
        );
    }

    /// `curl` on `registrar`'s admin API at `path` with `token`, as an operator would
    /// (a GET unless more arguments say otherwise).
    pub(crate) fn admin(&self, registrar: &Registrar, token: &str, path: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sf", "--cacert"])
            .arg(self.path("pki/ca.pem"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("https://{}{path}", registrar.admin));
        c
    }
}

/// A plain ASAP registration as a legacy PE sends it, from its own association to
/// `registrar`: PE `pe_id` in pool "ProbePool" on SCTP port 7 of `addrs`. Returns the
/// response's error cause (`None`: registered).
fn legacy_register(
    registrar: std::net::SocketAddr,
    pe_id: u32,
    addrs: &[std::net::Ipv4Addr],
) -> Option<u16> {
    use asap::addr::Endpoint;
    use asap::transport::sctp::{Framing, PPID_ASAP, SctpConnection};
    use asap::transport::{MessageReader, write_message};
    use asap::wire::param::{
        Address, PeId, Policy, PoolElement, PoolHandle, SctpAddresses, Transport, TransportUse,
    };
    use asap::wire::{AsapMsg, Framer};
    let msg = AsapMsg::Registration {
        namespace: None,
        pool_handle: PoolHandle::new("ProbePool").expect("pool handle"),
        pool_element: PoolElement {
            pe_id: PeId::new(pe_id).expect("PE ID"),
            home_server_id: 0,
            registration_life: 30_000,
            user_transport: Transport::Sctp {
                port: std::num::NonZeroU16::new(7).expect("port"),
                transport_use: TransportUse::DataOnly,
                addrs: SctpAddresses::new(addrs.iter().map(|a| Address::new(*a)))
                    .expect("addresses"),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
            labels: Default::default(),
            status: Default::default(),
            serving_identity: None,
        },
    };
    let mut bytes = Vec::new();
    msg.encode(&mut bytes).expect("encode");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let to = Endpoint::single(registrar);
        let mut conn = SctpConnection::connect(&to, PPID_ASAP, Framing::Messages)
            .await
            .expect("connect");
        write_message(&mut conn, &bytes).await.expect("send");
        let mut reader = MessageReader::new(&mut conn, Framer::asap(65532));
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), reader.next())
                .await
                .expect("a reply within 30 s")
                .expect("read")
                .expect("the registrar closed the association");
            // Anything else (a keep-alive) is not the answer.
            if let AsapMsg::RegistrationResponse { reject, error, .. } =
                AsapMsg::decode(&frame).expect("decode").msg
            {
                assert_eq!(reject, error.is_some());
                return error.map(|e| e.causes()[0].code());
            }
        }
    })
}

/// Runs `make` until `check` accepts its standard output, for at most `limit`.
pub(crate) fn eventually(
    limit: Duration,
    what: &str,
    mut make: impl FnMut() -> Command,
    check: impl Fn(&str) -> bool,
) -> String {
    let start = now();
    loop {
        let out = make().output().expect("spawn");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&text) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; last output: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sends `line` on standard input to `cmd` and returns its standard output.
pub(crate) fn with_input(cmd: Command, line: &str) -> Output {
    spawn_with_input(cmd, line)
        .wait_with_output()
        .expect("wait")
}

/// [`with_input`] for a command that may not end by itself: killed after `limit`.
pub(crate) fn with_input_within(cmd: Command, line: &str, limit: Duration) -> Output {
    let mut child = spawn_with_input(cmd, line);
    let start = now();
    while child.try_wait().expect("wait").is_none() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().expect("wait")
}

/// `cmd` with piped output, `line` written to its standard input (then closed).
fn spawn_with_input(mut cmd: Command, line: &str) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{line}\n").as_bytes())
        .expect("write stdin");
    child
}

/// RSPLIB's pool user: `line` to a PE of `pool` found through the registrar at
/// `registrar` (IP:PORT); its output (it prints the echo).
pub(crate) fn rspterminal(registrar: &str, pool: &str, line: &str) -> String {
    let mut c = Command::new("timeout");
    c.args(["8", "rspterminal", "-asapannounce=off"])
        .arg(format!("-poolhandle={pool}"))
        .arg(format!("-registrar={registrar}"));
    String::from_utf8_lossy(&with_input(c, line).stdout).into_owned()
}

pub(crate) fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn"),
    )
}

/// rsp over TLS/SCTP: a multi-homed PE registers at A with both its addresses, B learns
/// it over ENRP/TLS/SCTP, and a PU resolving at B exchanges data with the PE. tshark,
/// with the processes' key log, decrypts every TLS record and decodes the ASAP and ENRP
/// inside.
#[test]
fn rsp_over_tls_sctp_with_a_multi_homed_pe_and_enrp_peering() {
    if !sctp_here() {
        return;
    }
    let mut lab = Lab::new();
    lab.init("enrp-1", "a");
    lab.init("enrp-2", "b");
    let capture = capture::Capture::start_tls(lab.dir.path());
    if let Some(keys) = capture.as_ref().and_then(capture::Capture::key_log) {
        lab.log_keys(keys);
    }
    let a = lab.start("a", &[]);
    let a_enrp = a.sctp("ENRP over TLS/SCTP");
    let b = lab.start("b", &["--peer", &a_enrp]);
    let (a_asap, b_asap) = (a.sctp("ASAP over TLS/SCTP"), b.sctp("ASAP over TLS/SCTP"));
    let listen = format!("sctp:127.0.0.1:0+{DOC_ADDR}:0");
    let _pe = spawn(lab.rsp(&["pe", "--pool", "echo", "--serve", "echo"]).args([
        "--cert",
        "pki/pe-echo-1.pem",
        "--registrar",
        &a_asap,
        "--listen",
        &listen,
    ]));
    let resolved = eventually(
        Duration::from_secs(60),
        "the PE resolved at B with both addresses",
        || {
            let mut c = lab.rsp(&["resolve", "echo", "--json", "--cert", "pki/pu-client-1.pem"]);
            c.args(["--registrar", &b_asap]);
            c
        },
        |out| {
            out.contains("\"transport\":\"sctp\"")
                && out.contains(DOC_ADDR)
                && out.contains("\"127.0.0.1\"")
        },
    );
    println!("resolved at B over TLS/SCTP: {}", resolved.trim());
    let mut pu = lab.rsp(&["pu", "echo", "--cert", "pki/pu-client-1.pem"]);
    pu.args(["--registrar", &b_asap]);
    let out = with_input(pu, "hello over sctp");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello over sctp",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Peers learnt from a list (spec §9.2) are dialed at the multi-homed SCTP endpoint
    // they advertise (§4.5). C peers with A only; B and C find each other in A's list.
    // C serves ENRP over TLS/SCTP on the two documentation addresses only, where no
    // TLS/TCP listener is: B can reach it only over SCTP, at the addresses C advertised.
    let c_token = lab.init("enrp-3", "c");
    let c_enrp = format!("192.0.2.2:0+{DOC_ADDR}:0");
    let c = lab.start("c", &["--peer", &a_enrp, "--enrp-sctp-listen", &c_enrp]);
    let peers_of_c = || lab.admin(&c, &c_token, "/v1/peers");
    let peers = eventually(
        Duration::from_secs(60),
        "C peered with A (configured) and B (learnt from A's list)",
        peers_of_c,
        |out| out.matches("\"state\":\"active\"").count() == 2 && out.contains("enrp-2"),
    );
    println!("C's peers: {}", peers.trim());
    if let Some(c) = capture {
        // Keys on disk are announced loudly.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("warning: SSLKEYLOGFILE is set"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Handle Update is left out: B may learn the PE from the handle table instead.
        let (asap, enrp) = c.check(
            &[
                "Registration",
                "Registration response",
                "Handle resolution",
                "Handle resolution response",
            ],
            &[
                "Presence",
                "Handle table request",
                "Handle table response",
                "List request",
                "List response",
            ],
        );
        println!(
            "tshark decrypted every TLS record and decoded {asap} ASAP and {enrp} ENRP messages, none malformed"
        );
    }
}

/// RSPLIB's `rspserver -echo` registers with `enrpd`'s legacy listener (and cannot without
/// it); `rspterminal` and `rsp pu --insecure-legacy` reach it through `enrpd`.
#[test]
fn rsplib_pe_and_pus_through_the_legacy_listener() {
    if !sctp_here() || !rsplib_here() {
        return;
    }
    let lab = Lab::new();
    let token = lab.init("enrp-1", "a");
    let a = lab.start("a", &[]);
    lab.create_namespace(&a, &token, "rsplib");
    // Without the legacy listener, RSPLIB has nowhere to register: the TLS/SCTP port does
    // not speak plain ASAP.
    let tls_asap = a.sctp("ASAP over TLS/SCTP");
    let port = tls_asap.rsplit(':').next().expect("port").to_owned();
    let refused = Command::new("timeout")
        .args([
            "8",
            "rspserver",
            "-echo",
            "-poolhandle=EchoPool",
            "-asapannounce=off",
        ])
        .arg(format!("-registrar=127.0.0.1:{port}"))
        .output()
        .expect("spawn rspserver");
    let text = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("Registration failed") || !refused.status.success(),
        "rspserver registered without a legacy listener: {text}"
    );
    drop(a);
    // From here on, every PPID 11 message must be plain ASAP (the probe above sent ASAP
    // into a TLS listener, whose TLS alert tshark rightly calls malformed ASAP).
    let capture = capture::Capture::start(lab.dir.path());
    let legacy = format!("127.0.0.1:3863+{DOC_ADDR}:3863");
    let a = lab.start(
        "a",
        &[
            "--legacy-asap-listen",
            &legacy,
            "--legacy-namespace",
            "rsplib",
        ],
    );
    assert!(
        a.line.contains("legacy ASAP (plain SCTP) on sctp:"),
        "{}",
        a.line
    );
    let _server = spawn(Command::new("rspserver").args([
        "-echo",
        "-poolhandle=EchoPool",
        &format!("-registrar={DOC_ADDR}:3863"),
        "-asapannounce=off",
    ]));
    let registrar = format!("sctp:{DOC_ADDR}:3863");
    // rsp pu, plain text to the legacy listener and to the RSPLIB PE, loudly asked for;
    // retried until rspserver has registered.
    let started = now();
    loop {
        let mut c = lab.rsp(&[
            "pu",
            "EchoPool",
            "--insecure-legacy",
            "--cert",
            "pki/pu-client-1.pem",
        ]);
        c.args(["--registrar", &registrar]);
        let out = with_input(c, "hello rspserver");
        if String::from_utf8_lossy(&out.stdout).trim() == "hello rspserver" {
            println!("rsp pu got rspserver's echo after {:?}", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rsp pu never got rspserver's echo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Spec §7.1 PR step 3 [P]: a PE may register only its association's addresses. An
    // association to 127.0.0.1 has 192.0.2.1 and 192.0.2.2 too (the guest's INIT lists
    // all of lo's addresses): both may be registered, although neither is the primary;
    // one address more, not the PE's, and the registration is refused (Security
    // Rejection, 0xA). Another pool, so that the PUs above and below see rspserver alone.
    let own = [DOC_ADDR, DOC_ADDR_2].map(|a| a.parse().expect("ip"));
    let foreign = [DOC_ADDR, DOC_ADDR_2, "203.0.113.9"].map(|a| a.parse().expect("ip"));
    let at = "127.0.0.1:3863".parse().expect("addr");
    assert_eq!(
        legacy_register(at, 0x5EC0_0001, &own),
        None,
        "own addresses"
    );
    assert_eq!(
        legacy_register(at, 0x5EC0_0002, &foreign),
        Some(0xA),
        "a foreign address"
    );
    // RSPLIB's own pool user.
    let out = rspterminal(
        &format!("{DOC_ADDR}:3863"),
        "EchoPool",
        "hello from rspterminal",
    );
    let text = out;
    assert!(
        text.contains("hello from rspterminal"),
        "rspterminal: {text}"
    );
    if let Some(c) = capture {
        let (asap, _) = c.check(
            &[
                "Registration",
                "Registration response",
                "Handle resolution",
                "Handle resolution response",
                "Endpoint keep-alive",
                "Endpoint keep-alive acknowledgement",
            ],
            &[],
        );
        println!("tshark decoded {asap} ASAP messages, none malformed");
    }
    // Without --insecure-legacy, no plaintext: the registrar connection is TLS and fails
    // (after the capture: its TLS records with PPID 11 are not ASAP). The PU keeps trying
    // (issue 25: a failed connection is transient) and never gets an answer.
    let out = with_input_within(
        {
            let mut c = lab.rsp(&["pu", "EchoPool", "--cert", "pki/pu-client-1.pem"]);
            c.args(["--registrar", &registrar]);
            c
        },
        "must not pass",
        Duration::from_secs(15),
    );
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("must not pass"),
        "a PU without --insecure-legacy got through"
    );
}

/// `rsp pe --insecure-legacy` registers with RSPLIB's `rspregistrar` and serves
/// `rspterminal`'s echo in plain SCTP.
#[test]
fn rsp_pe_with_rsplibs_registrar() {
    if !sctp_here() || !rsplib_here() {
        return;
    }
    let lab = Lab::new();
    let capture = capture::Capture::start(lab.dir.path());
    let _registrar = spawn(Command::new("rspregistrar").args([
        &format!("-asap={DOC_ADDR}:3863"),
        "-enrp=127.0.0.1:9901",
        "-minaddressscope=loopback",
        "-asapannounce=off",
        "-enrpannounce=off",
    ]));
    std::thread::sleep(Duration::from_secs(1));
    let registrar = format!("sctp:{DOC_ADDR}:3863");
    let listen = format!("sctp:{DOC_ADDR}:0");
    let _pe = spawn(
        lab.rsp(&[
            "pe",
            "--pool",
            "EchoPool",
            "--serve",
            "echo",
            "--insecure-legacy",
        ])
        .args([
            "--cert",
            "pki/pe-echo-1.pem",
            "--registrar",
            &registrar,
            "--listen",
            &listen,
        ]),
    );
    let start = now();
    loop {
        let out = rspterminal(&format!("{DOC_ADDR}:3863"), "EchoPool", "hello rsp pe");
        let text = out;
        if text.contains("hello rsp pe") {
            println!("rspterminal got rsp pe's echo after {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rspterminal never got the echo: {text}"
        );
    }
    if let Some(c) = capture {
        let (asap, _) = c.check(
            &["Registration", "Registration response", "Handle resolution"],
            &[],
        );
        println!("tshark decoded {asap} ASAP messages, none malformed");
    }
}
