//! A loopback TLS server that reads its configuration from a `TrustStore` on every accept,
//! and clients that present arbitrary chains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trust::testing::{TestCa, TestLeaf};
use trust::{Peer, Protocol, TrustStore};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the server saw of one connection.
pub(crate) type ServerOutcome = Result<Peer, String>;

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) store: Arc<TrustStore>,
    outcomes: Mutex<mpsc::UnboundedReceiver<ServerOutcome>>,
}

impl Server {
    /// Starts a server presenting `spiffe://DOMAIN/registrar/r1` of `ca`, trusting `ca`'s domain.
    pub(crate) async fn start(ca: &TestCa) -> Self {
        let leaf = ca.leaf("registrar/r1").dns("localhost").issue();
        let store = Arc::new(TrustStore::new(leaf.identity()).expect("store"));
        store.add_domain(ca.bundle()).expect("add local domain");
        Self::start_with(store).await
    }

    pub(crate) async fn start_with(store: Arc<TrustStore>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let accept_store = store.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                // Read per accept: changes to the store apply to the next handshake.
                let acceptor = TlsAcceptor::from(accept_store.server_config(Protocol::Asap));
                let store = accept_store.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let peer = match Peer::from_tls(tls.get_ref().1) {
                        Ok(peer) => peer,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    if let Err(e) = Protocol::Asap.check_alpn(tls.get_ref().1) {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                    let mut live = match store.register_connection(&peer) {
                        Ok(live) => live,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(peer));
                    if tls.write_all(b"ok\n").await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    tokio::select! {
                        reason = live.closed() => {
                            let _ = tls.write_all(format!("closed {reason:?}\n").as_bytes()).await;
                            let _ = tls.shutdown().await;
                        }
                        _ = tls.read(&mut buf) => {}
                    }
                });
            }
        });
        Self {
            addr,
            store,
            outcomes: Mutex::new(rx),
        }
    }

    pub(crate) async fn next_outcome(&self) -> ServerOutcome {
        tokio::time::timeout(TIMEOUT, self.outcomes.lock().await.recv())
            .await
            .expect("server outcome in time")
            .expect("server running")
    }
}

/// A client config that trusts `ca`'s root for the server (standard webpki, name
/// `localhost`) and presents `leaf`, or nothing.
pub(crate) fn raw_client(ca: &TestCa, leaf: Option<&TestLeaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.root().clone()).expect("root");
    let builder = ClientConfig::builder_with_provider(trust::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key_der())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![trust::ALPN_ASAP.to_vec()];
    Arc::new(config)
}

/// What the client saw: the first line from the server, or the error.
pub(crate) type ClientOutcome = Result<String, String>;

pub(crate) async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> ClientOutcome {
    session(addr, config).await.map(|(_, line)| line)
}

/// A TLS session to `addr`: the server's identity and its first line.
async fn session(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<(Peer, String), String> {
    let run = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        // Checked by `raw_client` configurations only: SPIFFE authenticates servers by
        // their SPIFFE ID.
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = Peer::from_tls(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(tls)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("closed without a line".to_owned());
        }
        Ok((peer, line.trim_end().to_owned()))
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("client in time")
}

/// One handshake with `leaf` (or none): the server's and the client's view.
pub(crate) async fn handshake(
    server: &Server,
    ca: &TestCa,
    leaf: Option<&TestLeaf>,
) -> (ServerOutcome, ClientOutcome) {
    let client = connect(server.addr, raw_client(ca, leaf)).await;
    let seen = server.next_outcome().await;
    (seen, client)
}

/// Asserts the handshake was refused and the server's error mentions `reason`.
pub(crate) fn assert_refused(outcome: (ServerOutcome, ClientOutcome), reason: &str) {
    let (server, client) = outcome;
    match server {
        Err(e) => assert!(
            e.contains(reason),
            "server error {e:?} does not mention {reason:?}"
        ),
        Ok(peer) => panic!("accepted {peer:?}, expected refusal: {reason}"),
    }
    assert!(client.is_err(), "client saw success: {client:?}");
}

/// A listener serving `protocol` with `store`'s server configuration (read per accept),
/// for clients that dial a server of any role: each accepted session is held open until
/// the client closes or the store tells it to close (revocation), then dropped.
pub(crate) async fn serve(store: Arc<TrustStore>, protocol: Protocol) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = TlsAcceptor::from(store.server_config(protocol));
            let store = store.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(peer) = Peer::from_tls(tls.get_ref().1) else {
                    return;
                };
                let Ok(mut live) = store.register_connection(&peer) else {
                    return;
                };
                if tls.write_all(b"ok\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 64];
                tokio::select! {
                    _ = live.closed() => {}
                    _ = tls.read(&mut buf) => {}
                }
            });
        }
    });
    addr
}

/// Dials `addr` with `config` and reads the server's first line: the server's identity,
/// or the handshake error as the client sees it.
pub(crate) async fn dial(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Peer, String> {
    session(addr, config).await.map(|(peer, _)| peer)
}

/// A store presenting a fresh `path` leaf of `ca` and trusting `ca`'s domain.
pub(crate) fn store_of(ca: &TestCa, path: &str) -> Arc<TrustStore> {
    let store = TrustStore::new(ca.leaf(path).issue().identity()).expect("store");
    store.add_domain(ca.bundle()).expect("domain");
    Arc::new(store)
}
