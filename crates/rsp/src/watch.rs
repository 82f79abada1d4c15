//! `rsp watch POOL`: the PEs of a pool as they come and go, from the registrar's admin API
//! (`GET /v1/watch/pools`, Server-Sent Events, issue 22): a snapshot, then one line per PE
//! added, updated or removed (with the reason), `--json` for JSON lines. Reconnects with
//! `Last-Event-ID` when the stream ends (the API ends each after 10 minutes) or breaks,
//! so no change is missed; stops with one line on a refusal (401, 403, 404, 422).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// How long to wait before reconnecting after a stream ended or broke.
const RECONNECT: Duration = Duration::from_secs(1);

/// `rsp watch`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The pool: text, or `hex:` and hex digits.
    pool: String,
    /// The namespace.
    #[arg(long, env = "RSP_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The registrar's admin API.
    #[arg(long, env = "RSP_ADMIN", default_value = "https://127.0.0.1:8443")]
    admin: String,
    /// An admin API token of the auditor, operator or admin role (prefer the variable: a
    /// flag shows in the process list).
    #[arg(long, env = "RSP_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The CA certificate (PEM) the admin API's certificate chains to.
    #[arg(long, env = "RSP_CA")]
    ca: PathBuf,
    /// Print each event as one JSON line: `{"event": …, "id": …, "data": …}`.
    #[arg(long)]
    json: bool,
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    name: String,
    id: Option<String>,
    data: String,
}

/// Cuts a byte stream into events (the text/event-stream format, as much of it as the
/// admin API sends: `event`, `id`, `data`, comments).
#[derive(Debug, Default)]
struct Parser {
    buffer: Vec<u8>,
    event: SseEvent,
}

/// The most a single line may hold before the stream is judged broken (a snapshot of a
/// large namespace is one line: 16 MiB is far beyond the API's own limits).
const MAX_LINE: usize = 16 << 20;

impl Parser {
    fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<SseEvent>> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                if !event.name.is_empty() || !event.data.is_empty() {
                    out.push(event);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.event.name),
                "id" => self.event.id = Some(value.to_owned()),
                "data" => {
                    if !self.event.data.is_empty() {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                }
                _ => {} // a comment (keep-alive) or a field we do not use
            }
        }
        if self.buffer.len() > MAX_LINE {
            bail!("the admin API sent a line longer than {MAX_LINE} bytes");
        }
        Ok(out)
    }
}

/// Runs `rsp watch` until Ctrl-C or a refusal.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let target = Target::parse(&args.admin)?;
    let tls = tls_config(&args.ca)?;
    let mut last_id: Option<String> = None;
    let mut said_lost = false;
    loop {
        match watch_once(&args, &target, &tls, &mut last_id).await {
            Ok(()) => {}
            Err(Failure::Refused(e)) => return Err(e),
            Err(Failure::Lost(e)) => {
                if !said_lost {
                    eprintln!("lost the admin API ({}); reconnecting", crate::chain(&e));
                    said_lost = true;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

enum Failure {
    /// The API refused the request: retrying changes nothing.
    Refused(anyhow::Error),
    /// The connection failed or broke: reconnect.
    Lost(anyhow::Error),
}

/// The admin API's address, from `https://HOST:PORT`.
struct Target {
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("--admin {url:?}: an https:// URL (https://HOST:PORT)"))?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse()
                    .with_context(|| format!("--admin {url:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 443),
        };
        if host.is_empty() || host.contains('/') {
            bail!("--admin {url:?}: an https:// URL (https://HOST:PORT), without a path");
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }
}

fn tls_config(ca: &std::path::Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("--ca {}: cannot read", ca.display()))?
    {
        let cert = cert.with_context(|| format!("--ca {}: not PEM certificates", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("--ca {}: a certificate rustls refuses", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `text` with every byte outside RFC 3986's unreserved set percent-encoded.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One connection and its stream, until it ends.
async fn watch_once(
    args: &Args,
    target: &Target,
    tls: &Arc<ClientConfig>,
    last_id: &mut Option<String>,
) -> Result<(), Failure> {
    let lost = |e: anyhow::Error| Failure::Lost(e);
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("connect to {}:{}", target.host, target.port))
        .map_err(lost)?;
    let name = ServerName::try_from(target.host.clone())
        .with_context(|| format!("--admin: {:?} is no host name", target.host))
        .map_err(Failure::Refused)?;
    let stream = TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .context("TLS handshake with the admin API")
        .map_err(lost)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP")
        .map_err(lost)?;
    tokio::spawn(conn);
    let path = format!(
        "/v1/watch/pools?namespace={}&pool={}",
        query_value(&args.namespace),
        query_value(&args.pool)
    );
    let mut request = hyper::Request::get(path)
        .header("host", format!("{}:{}", target.host, target.port))
        .header("authorization", format!("Bearer {}", args.token))
        .header("accept", "text/event-stream");
    if let Some(id) = last_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .context("the request")
        .map_err(Failure::Refused)?;
    let response = sender
        .send_request(request)
        .await
        .context("request")
        .map_err(lost)?;
    let status = response.status();
    let mut body = response.into_body();
    if status != hyper::StatusCode::OK {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        let err = anyhow::anyhow!("the admin API answered {status}: {detail}");
        return Err(if status.is_server_error() {
            Failure::Lost(err)
        } else {
            Failure::Refused(err)
        });
    }
    let mut parser = Parser::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the event stream").map_err(lost)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for event in parser.feed(data).map_err(lost)? {
            if event.id.is_some() {
                last_id.clone_from(&event.id);
            }
            println!("{}", line(&event, args.json));
        }
    }
    Ok(())
}

/// How an event is printed: one line.
fn line(event: &SseEvent, json: bool) -> String {
    let data: Value =
        serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
    if json {
        return serde_json::json!({ "event": event.name, "id": event.id, "data": data })
            .to_string();
    }
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    match event.name.as_str() {
        "snapshot" => {
            let pools = data.as_array().cloned().unwrap_or_default();
            let pes: Vec<String> = pools
                .iter()
                .flat_map(|p| p["pool_elements"].as_array().cloned().unwrap_or_default())
                .map(|pe| format!("{} ({})", text(&pe["pe_id"]), text(&pe["transport"])))
                .collect();
            format!("snapshot: {} PEs: {}", pes.len(), pes.join(", "))
        }
        "added" | "updated" => {
            let pe = &data["pool_element"];
            format!(
                "{} {} in {}: {}, {}, {}, home {}",
                event.name,
                text(&data["pe_id"]),
                text(&data["pool"]),
                text(&pe["transport"]),
                text(&pe["policy"]),
                pe["registrant"].as_str().unwrap_or("no registrant"),
                text(&pe["home_registrar"]),
            )
        }
        "removed" => format!(
            "removed {} from {}: {}",
            text(&data["pe_id"]),
            text(&data["pool"]),
            text(&data["reason"])
        ),
        "reset" => format!("reset: {}; a fresh snapshot follows", text(&data["reason"])),
        other => format!("{other}: {data}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_across_chunks_and_comments_skipped() {
        let mut p = Parser::default();
        assert!(
            p.feed(b":\n\nevent: added\nid: 7\nda")
                .expect("ok")
                .is_empty()
        );
        let events = p.feed(b"ta: {\"a\":1}\r\n\n").expect("ok");
        assert_eq!(
            events,
            [SseEvent {
                name: "added".into(),
                id: Some("7".into()),
                data: "{\"a\":1}".into()
            }]
        );
    }

    #[test]
    fn admin_urls_and_query_values() {
        let t = Target::parse("https://127.0.0.1:8443").expect("ok");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8443));
        let t = Target::parse("https://[::1]:9/").expect("ok");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert!(Target::parse("http://x:1").is_err());
        assert!(Target::parse("https://x:1/v1").is_err());
        assert_eq!(query_value("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn changes_print_as_one_line_each() {
        let removed = SseEvent {
            name: "removed".into(),
            id: Some("3".into()),
            data: r#"{"pool":"echo","pe_id":"0x00000001","reason":"remove:timeout"}"#.into(),
        };
        assert_eq!(
            line(&removed, false),
            "removed 0x00000001 from echo: remove:timeout"
        );
        let json: Value = serde_json::from_str(&line(&removed, true)).expect("JSON");
        assert_eq!(json["id"], "3");
        assert_eq!(json["data"]["reason"], "remove:timeout");
    }
}
