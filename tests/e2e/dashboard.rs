//! The operators' dashboard (`/ui/`, issue 22) in a real headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API, against a real `enrpd` with two real `rsp pe`:
//! a forged token is refused, an admin token signs in, the pool shows its two PEs, a killed
//! PE vanishes without a reload (from the watch stream), revoking an identity through the
//! form (after its confirm step) takes its PE away, and the audit log filters. A
//! screenshot of each page goes to `target/ui-screenshots/` (a CI artifact).
//!
//! Skips with a message when `chromium` or `chromedriver` is missing; fails then under
//! `RSP_REQUIRE_BROWSER=1` (.ci/run sets it and installs both from Debian: no browser is
//! downloaded at test time).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::admin::{admin_token, api, new_token};
use crate::endpoints::start_pe_lines;
use crate::support::Lab;

/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long the page may take to show a change (a loaded, shared CI machine).
const PATIENCE: Duration = Duration::from_secs(30);

/// The flags for Chromium on a CI machine: no sandbox (containers), no GPU, nothing
/// fetched from the network by the browser itself.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1366,900",
];

/// A program on the PATH (or at a Debian path), or why the test cannot run.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .chain([
                PathBuf::from("/usr/lib/chromium"),
                PathBuf::from("/usr/bin"),
            ])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(program: &Path) -> Self {
        // A free port: chromedriver takes a port number, not a listener.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chromedriver");
        let driver = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let start = Instant::now();
        loop {
            if let Ok((200, v)) = driver.try_call("GET", "/status", None)
                && v["value"]["ready"] == true
            {
                return driver;
            }
            assert!(start.elapsed() < PATIENCE, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command: HTTP/1.1 with a JSON body, one connection each.
    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut tcp = TcpStream::connect(self.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        // chromedriver may keep the connection open: read the head, then Content-Length
        // bytes (it answers with one; a chunked answer would need decoding).
        let mut answer = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let (head, length) = loop {
            let n = tcp.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            answer.extend_from_slice(&buf[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&answer[..end]).into_owned();
                answer.drain(..end + 4);
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .expect("a Content-Length");
                break (head, length);
            }
        };
        while answer.len() < length {
            let n = tcp.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((
            status,
            serde_json::from_slice(&answer[..length]).unwrap_or(Value::Null),
        ))
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self
            .try_call(method, path, body.as_ref())
            .expect("chromedriver answers");
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .try_call("DELETE", &format!("/session/{}", self.session), None);
    }
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver, chromium: &Path, profile: &Path) -> Self {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let v = driver.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                // The admin listener's certificate is from the lab's own CA, which this
                // fresh profile does not trust: accepted for this test's session only.
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {"binary": chromium, "args": args},
            }}})),
        );
        let session = v["sessionId"].as_str().expect("a session id").to_owned();
        Self { driver, session }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The elements matching a CSS selector now.
    fn all(&self, css: &str) -> Vec<String> {
        let found = self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("a list: {found}"))
            .iter()
            .map(|e| {
                e[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("an element: {found}"))
                    .to_owned()
            })
            .collect()
    }

    /// The one element matching `css`, waiting for it.
    fn one(&self, css: &str) -> String {
        self.wait(&format!("{css} to appear"), || {
            self.all(css).into_iter().next()
        })
    }

    /// An element's text; empty when the page redrew it meanwhile (a stale element:
    /// the callers poll, and read the new one next time).
    fn text(&self, element: &str) -> String {
        self.read(&format!("/element/{element}/text"))
    }

    fn attribute(&self, element: &str, name: &str) -> String {
        self.read(&format!("/element/{element}/attribute/{name}"))
    }

    fn read(&self, path: &str) -> String {
        let path = format!("/session/{}{path}", self.session);
        let (status, v) = self
            .driver
            .try_call("GET", &path, None)
            .expect("chromedriver answers");
        match (status, v["value"]["error"].as_str()) {
            (200, _) => match &v["value"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            },
            (404, Some("stale element reference")) => String::new(),
            _ => panic!("GET {path}: {v}"),
        }
    }

    /// Clicks the element matching `css` once it is there and shown (the page may still
    /// be signing in or drawing).
    fn click(&self, css: &str) {
        self.wait(&format!("{css} to take a click"), || {
            let e = self.all(css).into_iter().next()?;
            let path = format!("/session/{}/element/{e}/click", self.session);
            let (status, v) = self
                .driver
                .try_call("POST", &path, Some(&json!({})))
                .expect("chromedriver answers");
            match (status, v["value"]["error"].as_str()) {
                (200, _) => Some(()),
                (_, Some("element not interactable" | "stale element reference")) => None,
                _ => panic!("POST {path}: {v}"),
            }
        });
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.one(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        if !text.is_empty() {
            self.cmd(
                "POST",
                &format!("/element/{e}/value"),
                Some(json!({ "text": text })),
            );
        }
    }

    /// Polls `check` until it gives a value, for at most [`PATIENCE`].
    fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what}; the page says: {}",
                self.all("body")
                    .first()
                    .map(|b| self.text(b))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until an element matching `css` reads exactly `text`.
    fn wait_text(&self, what: &str, css: &str, text: &str) {
        self.wait(what, || {
            self.all(css)
                .iter()
                .any(|e| self.text(e) == text)
                .then_some(())
        });
    }

    /// The registrants of the PE rows on the page.
    fn registrants(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .all("tr[data-pe]")
            .iter()
            .map(|e| self.attribute(e, "data-registrant"))
            .collect();
        r.sort();
        r
    }

    fn status(&self) -> String {
        self.text(&self.one("#status"))
    }

    /// Saves a screenshot of the page as `dir/NAME.png`.
    fn screenshot(&self, dir: &Path, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().expect("base64 text"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }
}

/// Standard base64 (the screenshot's encoding; a dozen lines rather than a dependency).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Where the screenshots go: `target/ui-screenshots/` of this workspace.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

#[test]
fn base64_decodes_what_the_screenshots_use() {
    assert_eq!(base64_decode("aVZCT1J3MEtHZ289"), b"iVBORw0KGgo=");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
    assert_eq!(base64_decode("YQ=="), b"a");
}

#[test]
fn the_dashboard_shows_pools_live_revokes_through_its_form_and_filters_the_audit_log() {
    let (Some(chromium), Some(chromedriver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        let why = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)";
        assert!(
            std::env::var_os("RSP_REQUIRE_BROWSER").is_none_or(|v| v != "1"),
            "RSP_REQUIRE_BROWSER=1: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    };
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar();
    let (pe1, _log1) = start_pe_lines(&lab, reg.addr, "pe-echo-1", &["--pool", "echo"]);
    let (_pe2, _log2) = start_pe_lines(&lab, reg.addr, "pe-echo-2", &["--pool", "echo"]);
    let shots = screenshot_dir();

    let driver = Driver::start(&chromedriver);
    let browser = Browser::open(&driver, &chromium, &lab.path("chromium-profile"));
    let ui = format!("https://127.0.0.1:{}/ui/", reg.admin.port());
    browser.go(&ui);

    // A forged token is refused: no page opens, and the API audited the refusal.
    browser.type_into("#token", "rsp_0000_forged");
    browser.click("#sign-in-token");
    browser.wait("the refusal", || {
        browser
            .status()
            .starts_with("Sign-in refused: 401")
            .then_some(())
    });
    assert!(browser.all("tr[data-pe]").is_empty());
    browser.screenshot(&shots, "sign-in");

    // An auditor's token signs in and reads, but the revoke form is refused for it (the
    // API decides, 403, audited below) and nothing is revoked.
    let admin = Some(token.as_str());
    let created = new_token(&lab, &reg, &token, "night shift", "auditor");
    let auditor = created["token"].as_str().expect("the secret");
    let auditor_id = created["id"].as_str().expect("the id");
    browser.type_into("#token", auditor);
    browser.click("#sign-in-token");
    browser.one("tr[data-pe]");
    // Signed in, the page is the pools; the token is in no URL.
    assert!(browser.url().ends_with("/ui/#/pools"), "{}", browser.url());
    browser.click("nav a[href='#/trust']");
    browser.type_into("#revoke-subject", "spiffe://acme.test/pe/echo-1");
    browser.click("#revoke-submit");
    browser.click("#revoke-yes");
    browser.wait("the refusal", || {
        browser
            .status()
            .starts_with("Not revoked: 403")
            .then_some(())
    });
    let (status, list) = api(&lab, &reg, admin, "GET", "/v1/revocations", None);
    assert_eq!((status, list.as_str()), (200, "[]"), "an auditor revoked");
    browser.click("#sign-out");

    // The admin token: the pool with its two PEs, from the watch stream's snapshot.
    browser.one("#sign-in");
    browser.type_into("#token", &token);
    browser.click("#sign-in-token");
    // Signed in again, the page is the one left (trust): go to the pools.
    browser.click("nav a[href='#/pools']");
    let both = vec![
        "spiffe://acme.test/pe/echo-1".to_owned(),
        "spiffe://acme.test/pe/echo-2".to_owned(),
    ];
    browser.wait("the pool's two PEs", || {
        (browser.registrants() == both).then_some(())
    });
    let pool = browser.one("tr[data-pool='echo']");
    assert!(
        browser.text(&pool).starts_with("echo 2"),
        "{}",
        browser.text(&pool)
    );
    // Each PE row ends with its age since it registered here (this registrar is home of
    // both): seconds, not "–".
    for row in browser.all("tr[data-pe]") {
        let text = browser.text(&row);
        assert!(text.ends_with(" s"), "no age in {text:?}");
    }
    browser.screenshot(&shots, "pools");

    // Killed, a PE leaves the page without a reload: the status line (which a reload
    // would clear) says the stream told the page.
    drop(pe1);
    browser.wait("PE echo-1 to go", || {
        (browser.registrants() == both[1..]).then_some(())
    });
    assert!(
        browser.status().contains(" left echo: remove:"),
        "{}",
        browser.status()
    );

    // The trust page's form revokes PE echo-2's identity, only once confirmed.
    browser.click("nav a[href='#/trust']");
    browser.type_into("#revoke-subject", &both[1]);
    browser.type_into("#revoke-reason", "dashboard test");
    browser.click("#revoke-submit");
    let question = browser.one("#revoke-question");
    assert_eq!(browser.text(&question), format!("Revoke {}?", both[1]));
    let (status, list) = api(&lab, &reg, admin, "GET", "/v1/revocations", None);
    assert_eq!(
        (status, list.as_str()),
        (200, "[]"),
        "revoked before the confirmation"
    );
    browser.click("#revoke-yes");
    browser.wait("the revocation", || {
        (browser.status() == format!("Revoked {}", both[1])).then_some(())
    });
    let listed = browser.one("#revocations tbody tr");
    assert!(browser.text(&listed).contains("dashboard test"));
    browser.screenshot(&shots, "trust");

    // Its PE goes from the pool (and the pool, now empty, from the namespace). The
    // table's caption is drawn from the stream's snapshot: the page has its data.
    browser.click("nav a[href='#/pools']");
    browser.wait_text("the snapshot", "#pools caption", "Pools in default");
    browser.wait("PE echo-2 to go", || {
        browser.registrants().is_empty().then_some(())
    });

    browser.click("nav a[href='#/registrars']");
    browser.wait_text("the registrars page", "caption", "Peers");
    browser.screenshot(&shots, "registrars");

    // The audit log: every record, then only the revocation; the chain is intact.
    browser.click("nav a[href='#/audit']");
    let verify = browser.one("#audit-verify");
    browser.wait("the chain's status", || {
        browser
            .text(&verify)
            .starts_with("Chain intact")
            .then_some(())
    });
    let actions = || -> Vec<String> {
        browser
            .all("#audit-records tr[data-id]")
            .iter()
            .map(|r| browser.attribute(r, "data-action"))
            .collect()
    };
    browser.wait("register and remove records", || {
        let a = actions();
        (a.iter().any(|a| a == "register") && a.iter().any(|a| a == "remove:revoked")).then_some(())
    });
    browser.type_into("#audit-action", "admin:revoke");
    browser.click("#audit-apply");
    browser.wait("only the revocations", || {
        let texts: Vec<String> = browser
            .all("#audit-records tr[data-id]")
            .iter()
            .map(|r| browser.text(r))
            .collect();
        (actions().iter().all(|a| a == "admin:revoke")
            && texts
                .iter()
                .any(|t| t.contains(" ok ") && t.contains("pe/echo-2")))
        .then_some(())
    });
    browser.screenshot(&shots, "audit");
    // The auditor's refused revocation is in the log, with its token.
    browser.type_into("#audit-action", "");
    browser.type_into("#audit-outcome", "forbidden");
    browser.click("#audit-apply");
    browser.wait("the auditor's refusal", || {
        browser
            .all("#audit-records tr[data-id]")
            .iter()
            .map(|r| browser.text(r))
            .any(|t| t.contains(auditor_id) && t.contains("/v1/revocations"))
            .then_some(())
    });
    // The forged sign-in is in the log too, refused.
    browser.type_into("#audit-outcome", "unauthenticated");
    browser.click("#audit-apply");
    browser.wait("the forged token's refusal", || {
        let a = browser.all("#audit-records tr[data-id]");
        (!a.is_empty()
            && a.iter()
                .all(|r| browser.text(r).contains("unauthenticated")))
        .then_some(())
    });

    // Signing out forgets the token: a reload shows the sign-in form again.
    browser.click("#sign-out");
    browser.go(&ui);
    browser.one("#sign-in");
    assert!(browser.all("tr[data-id]").is_empty());

    // An operator may not read metrics: the page asks once, hides the health strip and
    // stops asking (each refusal would be an audit record).
    let created = new_token(&lab, &reg, &token, "operator", "operator");
    let operator_id = created["id"].as_str().expect("the id");
    browser.type_into("#token", created["token"].as_str().expect("the secret"));
    browser.click("#sign-in-token");
    browser.click("nav a[href='#/pools']");
    let strip = browser.one("#health");
    browser.wait("the health strip to hide", || {
        (browser.read(&format!("/element/{strip}/displayed")) == "false").then_some(())
    });
    std::thread::sleep(Duration::from_secs(6)); // past one scrape interval (5 s)
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "GET",
        &format!("/v1/audit?outcome=forbidden&identity=spiffe://acme.test/token/{operator_id}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let refused: Value = serde_json::from_str(&body).expect("JSON");
    let refused = refused["events"].as_array().expect("events");
    assert_eq!(refused.len(), 1, "{body}");
    assert!(body.contains("/metrics"), "{body}");
    eprintln!("screenshots in {}", shots.display());
}
