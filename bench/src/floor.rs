//! The floor: a minimal server with the registrar's TLS setup (tokio + rustls with ring,
//! ECDSA P-256, TLS 1.3 only, client certificates required and verified by rustls' stock
//! verifier against the same root, no resumption) that answers each [`REQUEST`]-byte
//! request with [`REPLY`] bytes and does nothing else. rsp's figures are reported as a
//! fraction of it, measured in the same run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use testkit::child::commands;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trust::{Protocol, TrustStore};

/// Request and reply sizes (issue 9).
pub(crate) const REQUEST: usize = 16;
pub(crate) const REPLY: usize = 128;

fn config(pki: &Path) -> Arc<rustls::ServerConfig> {
    let read = |name: &str| std::fs::read(pki.join(name)).expect("PKI file");
    let mut roots = rustls::RootCertStore::empty();
    for root in trust::certs_from_pem(&read("ca.pem")).expect("roots") {
        roots.add(root).expect("root");
    }
    let provider = trust::provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain = trust::certs_from_pem(&read("floor.pem")).expect("chain");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&read("floor.key")).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("certificate");
    // The registrar's ALPN, so that the same client configuration connects to both.
    config.alpn_protocols = vec![trust::ALPN_ASAP.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// The floor server's child process (see `child`).
pub(crate) async fn serve(pki: &Path) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config(pki));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    println!("listening {}", listener.local_addr().expect("address"));
    let accept = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = [0u8; REQUEST];
                let reply = [7u8; REPLY];
                while tls.read_exact(&mut req).await.is_ok() {
                    if tls.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    };
    let mut commands = commands();
    let stop = async move {
        while let Some(c) = commands.recv().await {
            if c.trim() == "stop" {
                break;
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = stop => {}
    }
    println!("stopped");
}

/// A client's TLS connection to the floor.
pub(crate) type FloorConn = TlsStream<TcpStream>;

/// A floor client connection: mutual TLS with the same client configuration as a PU's.
pub(crate) async fn connect(trust: &TrustStore, addr: SocketAddr) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(trust.client_config(Protocol::Asap));
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the floor");
    let _ = tcp.set_nodelay(true);
    connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("floor handshake")
}

/// One request and its reply.
pub(crate) async fn request(tls: &mut TlsStream<TcpStream>) {
    let req = [1u8; REQUEST];
    let mut reply = [0u8; REPLY];
    tls.write_all(&req).await.expect("floor request");
    tls.read_exact(&mut reply).await.expect("floor reply");
}
