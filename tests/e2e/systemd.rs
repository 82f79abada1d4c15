//! enrpd as a systemd service (issue 21, item 5): the shipped unit and config in
//! contrib/systemd, and the Type=notify protocol the unit relies on, spoken by the real
//! `enrpd` to a socket standing in for systemd.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Lab, bin, serving};

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(file)
}

/// The next notification `enrpd` sent, within 30 s.
fn next(manager: &UnixDatagram) -> String {
    let mut buf = [0_u8; 4096];
    let n = manager
        .recv(&mut buf)
        .expect("a notification from enrpd within 30 s");
    String::from_utf8(buf[..n].to_vec()).expect("text")
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// The shipped `enrpd.toml` (its addresses moved to free loopback ports, its data
/// directory to the lab's) starts a registrar, which then tells the notification socket
/// READY=1 with the serving line as its status, RELOADING=1 and READY=1 around a SIGHUP,
/// and STOPPING=1 on SIGTERM before exiting cleanly.
#[test]
fn enrpd_tells_systemd_when_it_serves_reloads_and_stops() {
    let lab = Lab::new();
    lab.init_registrar();
    let shipped =
        std::fs::read_to_string(contrib("enrpd.toml")).expect("contrib/systemd/enrpd.toml");
    let mut config = String::new();
    for line in shipped.lines() {
        let line = match line.split_once(" = ").map(|(k, _)| k) {
            Some("data") => format!("data = {:?}", lab.path("data").display().to_string()),
            Some("asap_listen" | "enrp_listen" | "admin_listen") => {
                format!(
                    "{} = \"127.0.0.1:0\"",
                    line.split_once(" = ").expect("key").0
                )
            }
            _ => line.to_owned(),
        };
        config.push_str(&line);
        config.push('\n');
    }
    assert!(
        config.contains("data = \""),
        "the shipped config names a data directory"
    );
    let config_file = lab.path("enrpd.toml");
    std::fs::write(&config_file, config).expect("config");

    let socket = lab.path("notify");
    let manager = UnixDatagram::bind(&socket).expect("bind the notification socket");
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut child = Command::new(bin("enrpd"))
        .arg("run")
        .arg("--config")
        .arg(&config_file)
        .arg("--allow-loopback")
        .env("NOTIFY_SOCKET", &socket)
        .env("ENRPD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn enrpd");
    let line = serving(&mut child);
    let ready = next(&manager);
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS={}", line.line.trim_end()),
        "ready once serving, with the serving line as status"
    );
    signal(child.id(), "-HUP");
    assert_eq!(next(&manager), "RELOADING=1");
    assert_eq!(next(&manager), "READY=1\nSTATUS=reloaded");
    signal(child.id(), "-TERM");
    assert_eq!(next(&manager), "STOPPING=1");
    let status = child.wait().expect("enrpd exits");
    assert!(status.success(), "enrpd stopped cleanly: {status}");
}

/// `rsp pe` tells the notification socket READY=1 once registered (its status the
/// registration line) and STOPPING=1 when it stops (SIGTERM: deregistered first).
#[test]
fn rsp_pe_tells_systemd_when_it_is_registered_and_when_it_stops() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar();
    let socket = lab.path("pe-notify");
    let manager = UnixDatagram::bind(&socket).expect("bind the notification socket");
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut pe = crate::endpoints::rsp(&lab, registrar.addr, "pe-echo-1")
        .args(["pe", "--pool", "echo", "--serve", "echo"])
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rsp pe");
    let ready = next(&manager);
    assert!(
        ready.starts_with(&format!(
            "READY=1\nSTATUS=registered with {}",
            registrar.addr
        )),
        "{ready}"
    );
    signal(pe.id(), "-TERM");
    assert_eq!(next(&manager), "STOPPING=1");
    let status = pe.wait().expect("rsp pe exits");
    assert!(status.success(), "rsp pe stopped cleanly: {status}");
}

/// `systemd-analyze verify` accepts the shipped units (their ExecStart pointed at the
/// built binaries: verify checks that they exist; the template as one instance). Skipped
/// where systemd-analyze is not installed.
#[test]
fn the_shipped_units_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: units not verified");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    for (shipped, binary, start, instance) in [
        (
            "enrpd.service",
            "enrpd",
            "ExecStart=/usr/local/bin/enrpd run --config /etc/rsp/enrpd.toml",
            "enrpd.service",
        ),
        (
            "rsp-pe@.service",
            "rsp",
            "ExecStart=/usr/local/bin/rsp pe --pool %i --config /etc/rsp/%i.toml --control %t/rsp-pe-%i/control.sock",
            "rsp-pe@web.service",
        ),
    ] {
        let unit = std::fs::read_to_string(contrib(shipped)).expect(shipped);
        assert!(unit.contains(start), "{shipped}: {start}");
        let unit = unit.replace(
            &format!("/usr/local/bin/{binary} "),
            &format!("{} ", bin(binary).display()),
        );
        let file = dir.path().join(instance);
        std::fs::write(&file, unit).expect("unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
            .expect("systemd-analyze verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains(".service:"),
            "systemd-analyze verify {shipped}: {stderr}"
        );
    }
    for unit in ["enrpd.service", "rsp-pe@.service"] {
        let text = std::fs::read_to_string(contrib(unit)).expect(unit);
        assert!(text.contains("\nType=notify\n"), "{unit} waits for READY=1");
    }
}
