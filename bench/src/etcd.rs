//! etcd, the registry many teams use today: Debian's `etcd-server` 3.4, started here as a
//! child with client-certificate authentication from the same PKI, on loopback, with a
//! temporary data directory; driven through its own gRPC API by the `etcd-client` crate
//! (tonic; rustls with ring). Registration = lease grant + put with the lease;
//! resolution = get by prefix; keep-alive = lease keep-alive.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions,
};

use crate::stats::Proc;

/// The running etcd.
pub(crate) struct Etcd {
    child: Child,
    pub(crate) endpoint: String,
    options: ConnectOptions,
    _data: tempfile::TempDir,
}

/// `etcd` on the PATH, or why not.
pub(crate) fn binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A loopback port free now (the race with another process binding it is accepted: etcd
/// then fails to start, which is reported).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    /// Starts etcd with the PKI in `pki` and waits until it answers a get (at most 30 s).
    pub(crate) async fn start(exe: &Path, pki: &Path) -> Result<Self, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(data.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let p = |f: &str| pki.join(f).display().to_string();
        let child = Command::new(exe)
            .args(["--name", "bench"])
            .arg("--data-dir")
            .arg(data.path().join("member"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .arg("--client-cert-auth")
            .args(["--trusted-ca-file", &p("ca.pem")])
            .args(["--cert-file", &p("etcd.pem")])
            .args(["--key-file", &p("etcd.key")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let read = |f: &str| std::fs::read(pki.join(f)).map_err(|e| e.to_string());
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")?))
            .identity(Identity::from_pem(
                read("etcd-client.pem")?,
                read("etcd-client.key")?,
            ))
            .domain_name("localhost");
        let mut etcd = Self {
            child,
            endpoint: client_url,
            options: ConnectOptions::new().with_tls(tls),
            _data: data,
        };
        #[allow(clippy::disallowed_methods)] // a driver waits on the clock
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                let mut c = etcd.client().await?;
                c.get("/ready", None).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(_)) => return Ok(etcd),
                last => {
                    #[allow(clippy::disallowed_methods)]
                    let late = Instant::now() > deadline;
                    if late || etcd.child.try_wait().ok().flatten().is_some() {
                        let log = std::fs::read_to_string(etcd._data.path().join("etcd.log"))
                            .unwrap_or_default();
                        let tail: Vec<_> = log.lines().rev().take(15).collect();
                        return Err(format!(
                            "etcd did not come up ({last:?}); its log ends:\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    pub(crate) fn proc(&self) -> Proc {
        Proc(self.child.id())
    }

    /// A new client: its own HTTP/2 connection (one per simulated PE or PU, as rsp has).
    pub(crate) async fn client(&self) -> Result<Client, String> {
        Client::connect([self.endpoint.as_str()], Some(self.options.clone()))
            .await
            .map_err(|e| e.to_string())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registration: a lease and a put with it. The TTL is rsp-bench's Registration Life
/// (300 s), so that no lease expires during a run (nor does any rsp PE).
pub(crate) async fn register(client: &mut Client, pool: &str, pe: u64) -> i64 {
    let lease = client
        .lease_grant(300, None)
        .await
        .expect("etcd lease grant");
    client
        .put(
            format!("/pools/{pool}/{pe:08}"),
            "127.0.0.1:7777",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .expect("etcd put");
    lease.id()
}

/// A resolution: the pool's PEs by prefix; returns how many.
pub(crate) async fn resolve(client: &mut Client, pool: &str) -> usize {
    client
        .get(
            format!("/pools/{pool}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd get")
        .kvs()
        .len()
}
