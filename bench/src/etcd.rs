//! etcd, the registry many teams use today: Debian's `etcd-server` 3.4, started here as a
//! child with client-certificate authentication from the same PKI, on loopback, with a
//! temporary data directory; driven through its own gRPC API by the `etcd-client` crate
//! (tonic; rustls with ring). Registration = lease grant + put with the lease;
//! resolution = get by prefix; keep-alive = lease keep-alive.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions,
};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::pin::{self, Cpus};
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
    /// Starts etcd with the PKI in `pki`, on `cpus` if given (Go sizes GOMAXPROCS by the
    /// affinity, as tokio does), and waits until it answers a get (at most 30 s).
    pub(crate) async fn start(exe: &Path, pki: &Path, cpus: Option<&Cpus>) -> Result<Self, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(data.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let p = |f: &str| pki.join(f).display().to_string();
        let mut command = Command::new(exe);
        command
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
            .stderr(log);
        let child = pin::spawn(&mut command, cpus)
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

/// What the leases of the keep-alive load share.
pub(crate) struct LeaseLoad {
    /// Keep-alive interval (rsp's PEs answer one per interval).
    pub(crate) interval: Duration,
    /// Lease TTL in seconds: 3 intervals, like a registrar's keep-alive timeout.
    pub(crate) ttl: i64,
    /// Keep-alive responses with a TTL > 0.
    pub(crate) answered: AtomicU64,
    /// Leases whose keep-alive got TTL ≤ 0 (expired) or whose stream broke.
    pub(crate) lost: AtomicU64,
}

/// One lease of the keep-alive load, as an etcd user registers a PE: a lease grant, a put
/// of `key` under it and the lease's keep-alive stream (etcd-client 0.21 opens one gRPC
/// stream per lease: its `LeaseKeeper` sends only its own ID, and the crate exposes no way
/// to send many IDs on one stream as Go's clientv3 does). The setup holds a permit of the
/// connection's `setup` semaphore; then a keep-alive every interval, first at `phase`,
/// until `stop`.
pub(crate) async fn kept_lease(
    mut client: Client,
    key: String,
    phase: Duration,
    setup: Arc<Semaphore>,
    load: Arc<LeaseLoad>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = async {
        let _permit = setup.acquire().await.map_err(|e| e.to_string())?;
        let lease = client
            .lease_grant(load.ttl, None)
            .await
            .map_err(|e| format!("etcd lease grant: {e}"))?;
        client
            .put(
                key,
                "127.0.0.1:7777",
                Some(PutOptions::new().with_lease(lease.id())),
            )
            .await
            .map_err(|e| format!("etcd put: {e}"))?;
        client
            .lease_keep_alive(lease.id())
            .await
            .map_err(|e| format!("etcd lease keep-alive: {e}"))
    }
    .await;
    let (mut keeper, mut stream) = match opened {
        Ok(k) => {
            let _ = ready.send(Ok(())).await;
            k
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    drop(ready);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, load.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alive = true;
    loop {
        tokio::select! {
            _ = tick.tick(), if alive => {
                if keeper.keep_alive().await.is_err() {
                    alive = false;
                    load.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            msg = stream.message(), if alive => match msg {
                Ok(Some(r)) if r.ttl() > 0 => {
                    load.answered.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    alive = false;
                    load.lost.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Keys under `prefix` (a lease's key goes when the lease expires).
pub(crate) async fn count(client: &mut Client, prefix: &str) -> u64 {
    let n = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("etcd count")
        .count();
    u64::try_from(n).unwrap_or(0)
}
