//! What the end-to-end tests share: finding the real binaries, a PKI made with the real
//! `rsp-pki`, a real `enrpd` on a loopback port, and an ASAP client over real mutual TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asap::transport::{MessageReader, write_message};
use asap::wire::limits::MAX_MESSAGE_LEN;
use asap::wire::{AsapMsg, Framer};
use identity::TrustDomain;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use trust::{DomainBundle, LocalIdentity, Protocol, TrustStore};

pub(crate) use crate::binaries::{Serving, admin_token, bin, run_ok, serving};

/// A temporary directory with a PKI for `acme.test`: a registrar, two PEs, a PU.
pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
}

impl Lab {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let lab = Self { dir };
        lab.pki(&["init", "--trust-domain", "acme.test"]);
        lab.pki(&[
            "issue",
            "registrar",
            "enrp-1",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ]);
        lab.pki(&["issue", "pe", "echo-1"]);
        lab.pki(&["issue", "pe", "echo-2"]);
        lab.pki(&["issue", "pu", "client-1"]);
        lab
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn pki(&self, args: &[&str]) -> Output {
        run_ok(
            Command::new(bin("rsp-pki"))
                .arg("--dir")
                .arg(self.path("pki"))
                .args(args),
        )
    }

    /// `enrpd init`; returns its standard output (with the admin token).
    pub(crate) fn init_registrar(&self) -> String {
        let out = run_ok(
            Command::new(bin("enrpd"))
                .arg("init")
                .arg("--pki")
                .arg(self.path("pki"))
                .arg("--data")
                .arg(self.path("data")),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `enrpd run` on a free loopback port with 200 ms keep-alive timers.
    pub(crate) fn start_registrar(&self) -> Registrar {
        self.start_registrar_with(200, 200)
    }

    /// `enrpd run` on a free loopback port with these keep-alive interval and timeout
    /// (ms). Tests whose PEs do not answer keep-alives use long ones, so that a slow
    /// machine does not remove a PE in the middle of the test.
    pub(crate) fn start_registrar_with(&self, interval_ms: u32, timeout_ms: u32) -> Registrar {
        self.spawn_registrar("127.0.0.1:0", interval_ms, timeout_ms, &[])
    }

    /// [`Lab::start_registrar_with`], with `extra` flags for `enrpd run`.
    pub(crate) fn start_registrar_with_args(
        &self,
        interval_ms: u32,
        timeout_ms: u32,
        extra: &[&str],
    ) -> Registrar {
        self.spawn_registrar("127.0.0.1:0", interval_ms, timeout_ms, extra)
    }

    /// `enrpd run` on `addr` (a registrar restarted on the port it had), with these
    /// keep-alive interval and timeout (ms).
    pub(crate) fn start_registrar_at(
        &self,
        addr: SocketAddr,
        interval_ms: u32,
        timeout_ms: u32,
    ) -> Registrar {
        self.spawn_registrar(&addr.to_string(), interval_ms, timeout_ms, &[])
    }

    /// `enrpd run` with ASAP on `asap_listen` (`0.0.0.0:0`: every address, for PEs in
    /// other network namespaces), with these keep-alive interval and timeout (ms).
    pub(crate) fn start_registrar_on(
        &self,
        asap_listen: &str,
        interval_ms: u32,
        timeout_ms: u32,
    ) -> Registrar {
        self.spawn_registrar(asap_listen, interval_ms, timeout_ms, &[])
    }

    /// `enrpd run` with ASAP on `asap_listen` and the admin API on a free loopback port;
    /// both addresses come from the line it prints once it serves.
    fn spawn_registrar(
        &self,
        asap_listen: &str,
        interval_ms: u32,
        timeout_ms: u32,
        extra: &[&str],
    ) -> Registrar {
        let (interval, timeout) = (interval_ms.to_string(), timeout_ms.to_string());
        let mut child = Command::new(bin("enrpd"))
            .arg("run")
            .arg("--data")
            .arg(self.path("data"))
            .args(["--asap-listen", asap_listen, "--allow-loopback"])
            .args(["--admin-listen", "127.0.0.1:0"])
            // Tests run side by side: never the default ENRP port 9902.
            .args(["--enrp-listen", "127.0.0.1:0"])
            .args(["--keep-alive-interval-ms", &interval])
            .args(["--keep-alive-timeout-ms", &timeout])
            .args(extra)
            .env("ENRPD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn enrpd");
        let first = serving(&mut child);
        let [addr, admin, ..] = first.addrs[..] else {
            panic!("no ASAP and admin addresses in {:?}", first.line);
        };
        Registrar { child, addr, admin }
    }

    /// A TLS client configuration presenting `ROLE-NAME` of this lab's PKI.
    pub(crate) fn identity(&self, cert: &str) -> Arc<TrustStore> {
        let read = |f: String| std::fs::read(self.path(&f)).expect("PKI file");
        let id = LocalIdentity::from_pem(
            &read(format!("pki/{cert}.pem")),
            &read(format!("pki/{cert}.key")),
        )
        .expect("identity");
        let store = TrustStore::new(id).expect("trust store");
        let domain = TrustDomain::new("acme.test").expect("domain");
        store
            .add_domain(DomainBundle::from_pem(domain, &read("pki/ca.pem".into())).expect("bundle"))
            .expect("add domain");
        Arc::new(store)
    }

    /// `enrpd update-pki`: the renewed registrar certificate, CA bundle and CRL into the
    /// registrar's data directory (before a SIGHUP).
    pub(crate) fn update_pki(&self) -> Output {
        run_ok(
            Command::new(bin("enrpd"))
                .arg("update-pki")
                .arg("--pki")
                .arg(self.path("pki"))
                .arg("--data")
                .arg(self.path("data")),
        )
    }

    /// `enrpd audit verify`.
    pub(crate) fn verify_audit(&self) -> Output {
        Command::new(bin("enrpd"))
            .arg("audit")
            .arg("verify")
            .arg("--data")
            .arg(self.path("data"))
            .output()
            .expect("spawn enrpd audit verify")
    }
}

/// A registrar of a peered set (issue 7): its own data directory, ENRP on a loopback port.
pub(crate) struct Peered {
    /// The running `enrpd` (ASAP and admin addresses).
    pub(crate) registrar: Registrar,
    /// Where it serves ENRP.
    pub(crate) enrp: SocketAddr,
    /// Its Server ID as `enrpd` prints it (`0x1a2b3c4d`).
    pub(crate) server_id: String,
}

impl Lab {
    /// Issues the registrar certificate `name` (localhost, 127.0.0.1) in this lab's PKI.
    pub(crate) fn issue_registrar(&self, name: &str) {
        self.pki(&[
            "issue",
            "registrar",
            name,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ]);
    }

    /// Issues the registrar certificate `NAME` in this lab's PKI and runs `enrpd init`
    /// with it into the data directory `DATA`; returns its first admin token.
    pub(crate) fn init_peer(&self, name: &str, data: &str) -> String {
        self.issue_registrar(name);
        let out = run_ok(
            Command::new(bin("enrpd"))
                .arg("init")
                .arg("--pki")
                .arg(self.path("pki"))
                .args(["--name", name])
                .arg("--data")
                .arg(self.path(data)),
        );
        admin_token(&out)
    }

    /// `enrpd run` on the data directory `DATA` with ASAP, ENRP and the admin API on free
    /// loopback ports, dialing `peers`, with keep-alives of a minute (test PEs that do not
    /// answer them stay registered).
    pub(crate) fn start_peer(&self, data: &str, peers: &[SocketAddr]) -> Peered {
        self.start_peer_with(data, peers, &[])
    }
}

/// A running `enrpd`, killed when dropped.
pub(crate) struct Registrar {
    pub(crate) child: Child,
    /// ASAP.
    pub(crate) addr: SocketAddr,
    /// The admin API (HTTPS).
    pub(crate) admin: SocketAddr,
}

impl Registrar {
    /// SIGTERM, and the exit status.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait for enrpd")
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// Like [`Lab::start_peer`], with `extra` flags for `enrpd run` (such as short peer
    /// timers: `--peer-no-response-ms 300`).
    pub(crate) fn start_peer_with(
        &self,
        data: &str,
        peers: &[SocketAddr],
        extra: &[&str],
    ) -> Peered {
        let mut cmd = Command::new(bin("enrpd"));
        cmd.arg("run")
            .arg("--data")
            .arg(self.path(data))
            .args(["--asap-listen", "127.0.0.1:0", "--allow-loopback"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--enrp-listen", "127.0.0.1:0"])
            .args(["--keep-alive-interval-ms", "60000"])
            .args(["--keep-alive-timeout-ms", "60000"])
            .args(extra)
            .env("ENRPD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for p in peers {
            cmd.args(["--peer", &p.to_string()]);
        }
        let mut child = cmd.spawn().expect("spawn enrpd");
        let Serving {
            line,
            addrs,
            server_id,
        } = serving(&mut child);
        let [addr, admin, enrp] = addrs[..] else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("expected three addresses in {line:?}");
        };
        Peered {
            registrar: Registrar { child, addr, admin },
            enrp,
            server_id,
        }
    }
}

/// An ASAP connection over mutual TLS.
pub(crate) struct Asap {
    reader: MessageReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

impl Asap {
    /// To a registrar (the store insists on a registrar identity).
    pub(crate) async fn connect(store: &TrustStore, addr: SocketAddr) -> std::io::Result<Self> {
        Self::connect_from(store, addr, std::net::Ipv4Addr::LOCALHOST).await
    }

    /// [`Asap::connect`] from the loopback address `from` (127.0.0.2 is another host).
    pub(crate) async fn connect_from(
        store: &TrustStore,
        addr: SocketAddr,
        from: std::net::Ipv4Addr,
    ) -> std::io::Result<Self> {
        Self::connect_with(store.client_config(Protocol::Asap), addr, from).await
    }

    /// To a PE's ASAP listener, which presents the PE's identity `pe`.
    pub(crate) async fn connect_to_pe(
        store: &TrustStore,
        addr: SocketAddr,
        pe: &str,
    ) -> std::io::Result<Self> {
        let id = identity::SpiffeId::parse(pe).expect("SPIFFE ID");
        let config = store
            .client_config_expecting(Protocol::Asap, identity::IdentityPattern::exact(&id))
            .expect("config");
        Self::connect_with(config, addr, std::net::Ipv4Addr::LOCALHOST).await
    }

    async fn connect_with(
        config: Arc<tokio_rustls::rustls::ClientConfig>,
        addr: SocketAddr,
        from: std::net::Ipv4Addr,
    ) -> std::io::Result<Self> {
        let connector = TlsConnector::from(config);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((from, 0).into())?;
        let tcp = socket.connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = connector.connect(name, tcp).await?;
        let (r, w) = tokio::io::split(tls);
        Ok(Self {
            reader: MessageReader::new(r, Framer::asap(MAX_MESSAGE_LEN)),
            writer: w,
        })
    }

    pub(crate) async fn send(&mut self, msg: &AsapMsg) {
        let bytes = msg.to_bytes().expect("encodes");
        write_message(&mut self.writer, &bytes)
            .await
            .expect("write");
    }

    /// Sends; `false` if the connection is gone.
    pub(crate) async fn try_send(&mut self, msg: &AsapMsg) -> bool {
        let bytes = msg.to_bytes().expect("encodes");
        write_message(&mut self.writer, &bytes).await.is_ok()
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        write_message(&mut self.writer, bytes).await.expect("write");
    }

    /// The next message, or `None` if the registrar closed the connection or said nothing
    /// for 5 s.
    pub(crate) async fn recv(&mut self) -> Option<AsapMsg> {
        let frame = self.recv_frame().await?;
        Some(
            AsapMsg::decode(&frame)
                .expect("the registrar sends valid messages")
                .msg,
        )
    }

    /// The next message's bytes, undecoded (as [`Asap::recv`]: `None` when closed or
    /// after 5 s of silence).
    pub(crate) async fn recv_frame(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(5), self.reader.next())
            .await
            .ok()?
            .ok()?
    }

    /// The next message that is not an endpoint keep-alive.
    pub(crate) async fn recv_reply(&mut self) -> Option<AsapMsg> {
        loop {
            match self.recv().await? {
                AsapMsg::EndpointKeepAlive { .. } => {}
                m => return Some(m),
            }
        }
    }
}

/// Drops the last audit record of the lab's data directory (`enrpd` stopped), as someone
/// holding the directory could: the chain alone still looks intact, a checkpoint does not.
pub(crate) async fn cut_audit_tail(lab: &Lab) {
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    for sql in [
        "DROP TRIGGER audit_events_no_delete",
        "DELETE FROM audit_events WHERE id = (SELECT MAX(id) FROM audit_events)",
    ] {
        sqlx::query(sql)
            .execute(conn.sqlite().expect("SQLite"))
            .await
            .expect("tamper");
    }
    drop(conn);
    store.close().await;
}

/// `enrpd audit ARGS --data <lab>/data`: success, and standard output then error.
pub(crate) fn enrpd_audit(lab: &Lab, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("enrpd"))
        .arg("audit")
        .args(args)
        .arg("--data")
        .arg(lab.path("data"))
        .output()
        .expect("enrpd audit");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The network namespaces of one test run, deleted when dropped (also on a panic). Their
/// names carry the test's tag and the process ID, so that runs side by side do not clash;
/// the veth pairs and the bridge live inside them and go with them.
pub(crate) struct Netns {
    prefix: String,
    names: Vec<String>,
}

impl Netns {
    pub(crate) fn new(tag: &str) -> Self {
        Self {
            prefix: format!("rsp-{tag}-{}", std::process::id()),
            names: Vec::new(),
        }
    }

    /// Adds the namespace `NAME` (prefixed); its full name.
    pub(crate) fn add(&mut self, name: &str) -> Result<String, String> {
        let full = format!("{}-{name}", self.prefix);
        // A namespace left by a killed run with the same process ID.
        let _ = Command::new("ip")
            .args(["netns", "del", &full])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &full])?;
        self.names.push(full.clone());
        Ok(full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// `ip ARGS`, or its error output.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `program` run inside the namespace `ns` (`ip netns exec` execs it: the child's PID is
/// the program's own).
pub(crate) fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Why this machine cannot run a test with network namespaces, if it cannot.
pub(crate) fn unsupported_netns() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root".to_owned());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) not found".to_owned());
    }
    None
}
