//! Health checks of a forwarding PE's target (issue 21, `rsp pe --check`): a PE whose
//! server fails its checks leaves the pool (deregisters, so that PUs fail over through the
//! existing paths) and comes back with the same PE ID once it passes again.
//!
//! - [`Health`]: the pure rise/fall state machine (HAProxy's and Consul's rule): `fall`
//!   failures in a row make a passing target failing, `rise` successes in a row make a
//!   failing one passing. The first result decides the start, so that a PE whose server
//!   is up registers at its first check.
//! - [`probe`]: one check, at the edge: a TCP connect, an HTTP/1.1 GET expecting 2xx, or a
//!   command exiting 0; each within the timeout.
//! - [`run`]: probes every interval and publishes the state.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::forward::Target;

/// One kind of check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `tcp`: the target accepts a connection.
    Tcp,
    /// `http:/path`: `GET /path` over HTTP/1.1 to the target answers 2xx.
    Http {
        /// The path, starting with `/`.
        path: String,
    },
    /// `exec:CMD`: `sh -c CMD` exits 0.
    Exec {
        /// The command line.
        command: String,
    },
}

impl Check {
    /// Its kind as PE Status 0x8104 tells registrars (docs/PROTOCOL-EXTENSIONS.md §5).
    pub fn kind(&self) -> crate::wire::param::CheckKind {
        use crate::wire::param::CheckKind;
        match self {
            Self::Tcp => CheckKind::TCP,
            Self::Http { .. } => CheckKind::HTTP,
            Self::Exec { .. } => CheckKind::EXEC,
        }
    }
}

impl FromStr for Check {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "tcp" {
            return Ok(Self::Tcp);
        }
        if let Some(path) = s.strip_prefix("http:") {
            // Only what a request line can carry: no spaces or line breaks to smuggle a
            // second header into the request.
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "{s:?}: the path of http: starts with / and has no spaces or control characters"
                ));
            }
            return Ok(Self::Http {
                path: path.to_owned(),
            });
        }
        if let Some(command) = s.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err(format!("{s:?}: exec: needs a command"));
            }
            return Ok(Self::Exec {
                command: command.to_owned(),
            });
        }
        Err(format!(
            "unknown check {s:?}: use tcp, http:/path or exec:COMMAND"
        ))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Http { path } => write!(f, "http:{path}"),
            Self::Exec { command } => write!(f, "exec:{command}"),
        }
    }
}

/// A check and its timing.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// What to check.
    pub check: Check,
    /// Time between the starts of two checks.
    pub interval: Duration,
    /// Limit: how long one check may take; longer is a failure.
    pub timeout: Duration,
    /// Successes in a row that bring a failing target back.
    pub rise: NonZeroU32,
    /// Failures in a row that take a passing target out.
    pub fall: NonZeroU32,
}

/// Longest status line an HTTP check reads: `HTTP/1.1 200 OK` and a long reason fit; a
/// server sending more without a line break is not answering HTTP (bounded memory).
pub const MAX_STATUS_LINE: usize = 1024;

/// The target's health as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No check has finished yet.
    Unknown,
    /// In the pool.
    Passing,
    /// Out of the pool.
    Failing,
}

/// The rise/fall state machine (pure; see the module doc).
#[derive(Clone, Debug)]
pub struct Health {
    rise: u32,
    fall: u32,
    state: State,
    /// Results in a row that disagree with `state`.
    streak: u32,
}

impl Health {
    /// Unknown until the first result.
    pub fn new(rise: NonZeroU32, fall: NonZeroU32) -> Self {
        Self {
            rise: rise.get(),
            fall: fall.get(),
            state: State::Unknown,
            streak: 0,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// Takes one check's result; the new state if it changed.
    pub fn observe(&mut self, passed: bool) -> Option<State> {
        let (against, needed, next) = match self.state {
            State::Unknown => {
                self.state = if passed {
                    State::Passing
                } else {
                    State::Failing
                };
                return Some(self.state);
            }
            State::Passing => (!passed, self.fall, State::Failing),
            State::Failing => (passed, self.rise, State::Passing),
        };
        if !against {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.state = next;
        Some(next)
    }
}

/// Runs `check` once against `target`, within `timeout`: `Err` says why it failed.
pub async fn probe(check: &Check, target: &Target, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match check {
            Check::Tcp => target
                .connect(timeout)
                .await
                .map(drop)
                .map_err(|e| format!("connecting to {target}: {e}")),
            Check::Http { path } => http_get(target, path, timeout).await,
            Check::Exec { command } => exec(command).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// `GET path` over HTTP/1.1: 2xx passes. Reads the status line only.
async fn http_get(target: &Target, path: &str, timeout: Duration) -> Result<(), String> {
    let mut conn = target
        .connect(timeout)
        .await
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rsp-check\r\nConnection: close\r\n\r\n",
        target.host()
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending to {target}: {e}"))?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !line.contains(&b'\n') {
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading from {target}: {e}"))?;
        if n == 0 {
            return Err(format!("{target} closed without an HTTP answer"));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_STATUS_LINE && !line[..MAX_STATUS_LINE].contains(&b'\n') {
            return Err(format!("{target} does not answer HTTP"));
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let status = String::from_utf8_lossy(&line[..end]).trim_end().to_owned();
    match status_code(&status) {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(_) => Err(format!("GET {path}: {status}")),
        None => Err(format!("GET {path}: not an HTTP status line: {status:?}")),
    }
}

/// The code of an `HTTP/1.x NNN reason` status line.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// `sh -c command`: exit 0 passes. Killed when the check times out (the future is
/// dropped).
async fn exec(command: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running sh -c {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}"))
    }
}

/// What [`run`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckEvent {
    /// The state changed; the failure that caused a fall, if it was one.
    Changed(State, Option<String>),
    /// A check failed without changing the state (yet).
    Failed(String),
}

/// Checks `target` every `config.interval` for ever, publishing each change of state to
/// `state` and reporting it, and each failure, to `events`.
pub async fn run(
    config: CheckConfig,
    target: Target,
    state: watch::Sender<State>,
    mut events: impl FnMut(CheckEvent),
) {
    let mut health = Health::new(config.rise, config.fall);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(&config.check, &target, config.timeout).await;
        let why = result.as_ref().err().cloned();
        match health.observe(result.is_ok()) {
            Some(next) => {
                state.send_replace(next);
                events(CheckEvent::Changed(next, why));
            }
            None => {
                if let Some(why) = why {
                    events(CheckEvent::Failed(why));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).expect("non-zero")
    }

    #[test]
    fn fall_failures_in_a_row_take_it_out_and_rise_successes_bring_it_back() {
        let mut h = Health::new(n(2), n(3));
        assert_eq!(h.state(), State::Unknown);
        assert_eq!(
            h.observe(true),
            Some(State::Passing),
            "the first result decides"
        );
        // Two failures, then a success: the streak starts again.
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(State::Failing), "the third in a row");
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None, "a failure resets the rise");
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(State::Passing), "the second in a row");
        assert_eq!(h.state(), State::Passing);
        // rise = fall = 1: every change of result is a change of state.
        let mut h = Health::new(n(1), n(1));
        assert_eq!(
            h.observe(false),
            Some(State::Failing),
            "failing from the start"
        );
        assert_eq!(h.observe(true), Some(State::Passing));
        assert_eq!(h.observe(false), Some(State::Failing));
    }

    #[test]
    fn checks_parse_or_say_why_not() {
        assert_eq!("tcp".parse(), Ok(Check::Tcp));
        assert_eq!(
            "http:/healthz?full=1".parse(),
            Ok(Check::Http {
                path: "/healthz?full=1".into()
            })
        );
        assert_eq!(
            "exec:pg_isready -q".parse(),
            Ok(Check::Exec {
                command: "pg_isready -q".into()
            })
        );
        for bad in [
            "",
            "udp",
            "http:",
            "http:health",
            "http:/a b",
            "http:/a\r\nX: y",
            "exec: ",
        ] {
            assert!(bad.parse::<Check>().is_err(), "{bad:?}");
        }
        assert_eq!(Check::Tcp.to_string(), "tcp");
    }

    #[test]
    fn a_status_line_is_read_strictly() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 204"), Some(204));
        assert_eq!(status_code("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code("HTTP/1.1 20 OK"), None);
    }

    /// A server answering each connection with `answer` after reading the request head.
    async fn http_server(answer: &'static str) -> Target {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let ok = text.starts_with("GET /healthz HTTP/1.1\r\n")
                        && text.contains("\r\nHost: 127.0.0.1\r\n");
                    let answer = if ok {
                        answer
                    } else {
                        "HTTP/1.1 400 Bad\r\n\r\n"
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr.to_string().parse().expect("target")
    }

    #[tokio::test]
    async fn each_probe_passes_on_a_healthy_target_and_fails_saying_why() {
        let t = Duration::from_secs(5);
        let http = |p: &str| Check::Http { path: p.into() };
        let up = http_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(probe(&Check::Tcp, &up, t).await, Ok(()));
        assert_eq!(probe(&http("/healthz"), &up, t).await, Ok(()));
        let err = probe(&http("/other"), &up, t).await.expect_err("400");
        assert!(err.contains("400"), "{err}");
        let sick = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let err = probe(&http("/healthz"), &sick, t).await.expect_err("503");
        assert!(err.contains("503 Service Unavailable"), "{err}");
        let babble = http_server("SSH-2.0-OpenSSH_9\r\n").await;
        let err = probe(&http("/healthz"), &babble, t)
            .await
            .expect_err("no HTTP");
        assert!(err.contains("not an HTTP status line"), "{err}");

        let gone: Target = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("target");
        let err = probe(&Check::Tcp, &gone, t).await.expect_err("refused");
        assert!(err.contains("connecting to"), "{err}");
        assert!(probe(&http("/healthz"), &gone, t).await.is_err());

        let exec = |c: &str| Check::Exec { command: c.into() };
        assert_eq!(probe(&exec("exit 0"), &gone, t).await, Ok(()));
        let err = probe(&exec("exit 3"), &gone, t).await.expect_err("exit 3");
        assert!(err.contains("exit status: 3"), "{err}");
        // The timeout is a limit: a check that hangs fails when it runs out.
        let started = tokio::time::Instant::now();
        let err = probe(&exec("sleep 30"), &gone, Duration::from_millis(300))
            .await
            .expect_err("timed out");
        assert!(err.contains("no answer within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
