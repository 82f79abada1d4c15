//! The demo services a `rsp pe` offers (echo RFC 862, discard RFC 863, daytime RFC 867,
//! chargen RFC 864), over TLS with the PE's certificate, and the line client `rsp pu`
//! uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trust::{Protocol, TrustStore};

/// Longest line echoed; a longer one ends the session (bounded memory per client).
const MAX_LINE: usize = 64 * 1024;

/// A demo service.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Service {
    /// Each line comes back (RFC 862).
    Echo,
    /// Everything is read and dropped (RFC 863).
    Discard,
    /// The time, then close (RFC 867).
    Daytime,
    /// Lines of rotating characters until the client closes (RFC 864).
    Chargen,
}

/// Accepts TLS clients (any identity of a trusted domain: PUs present certificates too)
/// and serves each on its own task.
pub(crate) async fn serve(listener: TcpListener, trust: Arc<TrustStore>, service: Service) {
    loop {
        let Ok((tcp, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = TlsAcceptor::from(trust.server_config(Protocol::Asap));
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                eprintln!("TLS handshake with {addr} failed");
                return;
            };
            let _ = run(service, tls).await;
        });
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    service: Service,
    stream: S,
) -> std::io::Result<()> {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    match service {
        Service::Echo => {
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = (&mut r)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 || !line.ends_with(b"\n") {
                    break;
                }
                w.write_all(&line).await?;
                w.flush().await?;
            }
        }
        Service::Discard => {
            tokio::io::copy(&mut r, &mut tokio::io::sink()).await?;
        }
        Service::Daytime => {
            w.write_all(daytime().as_bytes()).await?;
        }
        Service::Chargen => {
            let chars: Vec<u8> = (b' '..=b'~').collect();
            for i in 0.. {
                let mut line: Vec<u8> = (0..72).map(|j| chars[(i + j) % chars.len()]).collect();
                line.extend_from_slice(b"\r\n");
                if w.write_all(&line).await.is_err() {
                    break;
                }
            }
        }
    }
    w.shutdown().await
}

use tokio::io::AsyncReadExt as _;

/// "YYYY-MM-DD HH:MM:SS UTC\r\n" from the system clock.
#[allow(clippy::disallowed_methods)] // the service's purpose is to tell the time
fn daytime() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC\r\n",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A TLS session with a PE; `config` checks the PE's identity.
pub(crate) async fn connect_tls(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .context("TLS handshake with the PE timed out")?
    .context("TLS handshake with the PE")
}

/// A line-oriented TLS session with a PE.
pub(crate) struct Line {
    reader: BufReader<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>>,
    writer: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl Line {
    /// Connects with `config`, which checks the PE's identity.
    pub(crate) async fn connect(
        config: Arc<ClientConfig>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let (r, w) = tokio::io::split(connect_tls(config, addr).await?);
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends one line and reads one line back.
    pub(crate) async fn exchange(&mut self, line: &str) -> std::io::Result<String> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        self.writer.flush().await?;
        let mut answer = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut answer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the PE closed",
            ));
        }
        Ok(answer.trim_end_matches(['\r', '\n']).to_owned())
    }
}
