//! `rsp pe --control PATH`: a local control socket, so that an operator (or systemd's
//! `ExecReload`) can drain the PE and ask its state without signals: `rsp pe drain
//! --control PATH [--deadline 30s]` and `rsp pe status --control PATH [--json]`.
//!
//! The socket is a Unix stream socket, mode 0600. Each connection is checked before a
//! byte is read: its peer (`SO_PEERCRED`) must be root or the socket file's owner, the
//! user the PE runs as; anyone else is refused with one line and the refusal is logged.
//! One request line per connection (at most [`MAX_REQUEST`] bytes), answered with JSON
//! lines:
//!
//! - `status`: one line, [`Status`].
//! - `drain` or `drain MILLISECONDS`: what SIGUSR1 does (with that deadline instead of
//!   `--drain-timeout`), then one [`Status`] line at each change (registration, open
//!   sessions) until the drain ends (`"phase": "drained"` or `"timed-out"`).
//!
//! Anything else is answered `{"error": "..."}` and changes nothing.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::services::Gate;

/// Longest request line, in bytes (`drain 86400000` is 14): a client cannot make the PE
/// buffer more.
pub(crate) const MAX_REQUEST: u64 = 64;

/// The longest drain deadline a client may ask for: one day.
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(86_400);

/// Where the PE is in its life, as the control socket tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// Serving; registered or trying to be.
    Serving,
    /// Draining (SIGUSR1 or `rsp pe drain`): deregistered or deregistering, refusing new
    /// sessions, serving the open ones.
    Draining,
    /// Stopping (SIGTERM): the same, for `--stop-grace`.
    Stopping,
    /// Every session ended: the PE exits.
    Drained,
    /// The deadline passed with sessions open: they are closed, the PE exits.
    TimedOut,
}

/// A health check's state, as the control socket tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CheckStatus {
    /// `tcp`, `http:/path`, `exec:...`.
    pub(crate) kind: String,
    /// `unknown` (no result yet), `passing` or `failing`.
    pub(crate) state: String,
}

/// The PE's state (`rsp pe status --json` prints it as is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) pool: String,
    pub(crate) pe_id: String,
    /// Whether the registrar holds this PE's registration now.
    pub(crate) registered: bool,
    pub(crate) phase: Phase,
    pub(crate) check: Option<CheckStatus>,
    pub(crate) open_sessions: usize,
}

impl Status {
    /// One line for people: `pool web, PE 0x…: registered, serving; check tcp passing; 2
    /// open sessions`.
    pub(crate) fn text(&self) -> String {
        let registered = if self.registered {
            "registered"
        } else {
            "not registered"
        };
        let phase = match self.phase {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Drained => "drained",
            Phase::TimedOut => "drain timed out",
        };
        let check = self
            .check
            .as_ref()
            .map(|c| format!("; check {} {}", c.kind, c.state))
            .unwrap_or_default();
        format!(
            "pool {}, PE {}: {registered}, {phase}{check}; {} open sessions",
            self.pool, self.pe_id, self.open_sessions
        )
    }

    fn done(&self) -> bool {
        matches!(self.phase, Phase::Drained | Phase::TimedOut)
    }
}

/// What the PE tells the control socket, and what the socket may ask of it.
pub(crate) struct Board {
    status: watch::Sender<Status>,
    gate: Arc<Gate>,
    /// Asks the PE to drain with this deadline (`None`: `--drain-timeout`).
    drain: Box<dyn Fn(Option<Duration>) + Send + Sync>,
    /// `rsp pe drain` clients being answered (the PE waits for them before it exits).
    answering: watch::Sender<usize>,
}

impl Board {
    pub(crate) fn new(
        pool: String,
        pe_id: String,
        check: Option<String>,
        gate: Arc<Gate>,
        drain: impl Fn(Option<Duration>) + Send + Sync + 'static,
    ) -> Arc<Self> {
        let status = Status {
            pool,
            pe_id,
            registered: false,
            phase: Phase::Serving,
            check: check.map(|kind| CheckStatus {
                kind,
                state: "unknown".to_owned(),
            }),
            open_sessions: 0,
        };
        Arc::new(Self {
            status: watch::Sender::new(status),
            gate,
            drain: Box::new(drain),
            answering: watch::Sender::new(0),
        })
    }

    /// Waits until every `rsp pe drain` client has been told the last state, at most
    /// `within`.
    pub(crate) async fn settle(&self, within: Duration) {
        let mut rx = self.answering.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
    }

    pub(crate) fn set_registered(&self, registered: bool) {
        self.status
            .send_if_modified(|s| std::mem::replace(&mut s.registered, registered) != registered);
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.status
            .send_if_modified(|s| std::mem::replace(&mut s.phase, phase) != phase);
    }

    pub(crate) fn set_check(&self, passing: bool) {
        let state = if passing { "passing" } else { "failing" };
        self.status.send_if_modified(|s| match &mut s.check {
            Some(c) if c.state != state => {
                state.clone_into(&mut c.state);
                true
            }
            _ => false,
        });
    }

    fn now(&self) -> Status {
        let mut s = self.status.borrow().clone();
        s.open_sessions = self.gate.open();
        s
    }
}

/// Binds the control socket at `path` (mode 0600) and serves it until the runtime ends.
/// A socket file left by a PE that is gone is replaced; one a live PE answers on is not.
pub(crate) async fn listen(path: &Path, board: Arc<Board>) -> anyhow::Result<()> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("another PE answers on {}", path.display());
        }
        let meta = std::fs::symlink_metadata(path)?;
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            bail!("{} exists and is not a socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    // The socket file's owner is the user this PE runs as: the one peer allowed, with root.
    let owner = std::fs::metadata(path)?.uid();
    let path = path.to_owned();
    tokio::spawn(async move {
        let _cleanup = RemoveOnDrop(path);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let board = Arc::clone(&board);
            tokio::spawn(async move {
                if let Err(e) = serve(stream, owner, &board).await {
                    eprintln!("control socket: {e:#}");
                }
            });
        }
    });
    Ok(())
}

/// One `rsp pe drain` client being answered, until dropped.
struct Answering<'a>(&'a watch::Sender<usize>);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether a peer with `uid` may use the socket of `owner`.
pub(crate) fn allowed(uid: u32, owner: u32) -> bool {
    uid == 0 || uid == owner
}

async fn serve(stream: UnixStream, owner: u32, board: &Board) -> anyhow::Result<()> {
    let uid = stream
        .peer_cred()
        .context("reading the peer's credentials")?
        .uid();
    let (read, mut write) = stream.into_split();
    if !allowed(uid, owner) {
        let _ = write
            .write_all(b"{\"error\":\"refused: only the PE's user or root\"}\n")
            .await;
        bail!("refused a client of uid {uid}: only uid {owner} or root");
    }
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let mut words = line.split_whitespace();
    let answer = |s: &Status| {
        let mut l = serde_json::to_string(s).unwrap_or_default();
        l.push('\n');
        l
    };
    match (words.next(), words.next(), words.next()) {
        (Some("status"), None, None) => {
            write.write_all(answer(&board.now()).as_bytes()).await?;
        }
        (Some("drain"), ms, None) => {
            let deadline = match ms.map(str::parse::<u64>) {
                None => None,
                Some(Ok(ms)) if (1..=MAX_DEADLINE.as_millis() as u64).contains(&ms) => {
                    Some(Duration::from_millis(ms))
                }
                Some(_) => {
                    write
                        .write_all(b"{\"error\":\"a drain deadline is 1 to 86400000 ms\"}\n")
                        .await?;
                    return Ok(());
                }
            };
            eprintln!("control socket: draining");
            board.answering.send_modify(|n| *n += 1);
            let _answering = Answering(&board.answering);
            (board.drain)(deadline);
            let mut changes = board.status.subscribe();
            let mut open = board.gate.watch_open();
            let mut last = None;
            loop {
                let now = board.now();
                if last.as_ref() != Some(&now) {
                    write.write_all(answer(&now).as_bytes()).await?;
                    if now.done() {
                        break;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    r = open.changed() => if r.is_err() { break },
                }
            }
        }
        _ => {
            write
                .write_all(b"{\"error\":\"requests: status, drain [MILLISECONDS]\"}\n")
                .await?;
        }
    }
    Ok(())
}

/// `rsp pe status`: the PE's state, as text or JSON.
pub(crate) async fn status(path: &Path, json: bool) -> anyhow::Result<()> {
    let mut lines = request(path, "status").await?;
    let line = lines
        .next_line()
        .await?
        .context("the PE closed without an answer")?;
    let status = parse(&line)?;
    if json {
        println!("{line}");
    } else {
        println!("{}", status.text());
    }
    Ok(())
}

/// `rsp pe drain`: drains the PE and prints its progress until the drain ends.
pub(crate) async fn drain(path: &Path, deadline: Option<Duration>) -> anyhow::Result<()> {
    let request = match deadline {
        Some(d) if d.is_zero() || d > MAX_DEADLINE => {
            bail!("--deadline is more than 0 and at most 24h")
        }
        Some(d) => format!("drain {}", d.as_millis()),
        None => "drain".to_owned(),
    };
    let mut lines = self::request(path, &request).await?;
    let mut last = None;
    while let Some(line) = lines.next_line().await? {
        let status = parse(&line)?;
        println!("{}", status.text());
        last = Some(status);
    }
    match last {
        Some(s) if s.phase == Phase::Drained => Ok(()),
        Some(s) if s.phase == Phase::TimedOut => {
            bail!(
                "the drain deadline passed with {} open sessions",
                s.open_sessions
            )
        }
        _ => bail!("the PE closed the control socket before its drain ended"),
    }
}

async fn request(
    path: &Path,
    line: &str,
) -> anyhow::Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to the PE's control socket {}", path.display()))?;
    let (read, mut write) = stream.into_split();
    // A PE that refuses this client answers before it reads, and closes: the request may
    // then meet a closed socket while the refusal waits to be read.
    if let Err(e) = write.write_all(format!("{line}\n").as_bytes()).await {
        let mut lines = BufReader::new(read).lines();
        if let Some(answer) = lines.next_line().await? {
            parse(&answer)?;
        }
        return Err(e.into());
    }
    Ok(BufReader::new(read).lines())
}

fn parse(line: &str) -> anyhow::Result<Status> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(e) = v.get("error").and_then(|e| e.as_str())
    {
        bail!("the PE: {e}");
    }
    serde_json::from_str(line).with_context(|| format!("an answer that is not a status: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_or_root_may_use_the_socket() {
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 1000));
        assert!(!allowed(1001, 1000));
        assert!(!allowed(65534, 0));
    }

    #[test]
    fn a_status_reads_as_one_line() {
        let s = Status {
            pool: "web".into(),
            pe_id: "0x00000007".into(),
            registered: false,
            phase: Phase::Draining,
            check: Some(CheckStatus {
                kind: "tcp".into(),
                state: "passing".into(),
            }),
            open_sessions: 2,
        };
        assert_eq!(
            s.text(),
            "pool web, PE 0x00000007: not registered, draining; check tcp passing; 2 open sessions"
        );
        let line = serde_json::to_string(&s).expect("json");
        assert!(line.contains("\"phase\":\"draining\""), "{line}");
        assert_eq!(parse(&line).expect("parses"), s);
        assert!(parse("{\"error\":\"no\"}").is_err());
    }
}
