//! `enrpd` and RSPLIB's `rspregistrar` peering over plain ENRP/SCTP (issue 8): each
//! learns the other's PEs, the checksums agree, each takes over the other's PEs when it
//! is killed, and without the legacy ENRP listener there is no peering at all.

use std::process::Command;
use std::time::Duration;

use super::{
    DOC_ADDR, Lab, Proc, Registrar, eventually, now, rsplib_here, sctp_here, spawn, with_input,
};

/// RSPLIB's Server ID in this test (`rspregistrar -identifier`).
const RSPLIB_ID: &str = "0x11111111";

/// `curl` GET on the admin API, as an operator would.
fn admin_get(lab: &Lab, registrar: &Registrar, token: &str, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sf", "--cacert"])
        .arg(lab.path("pki/ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://{}{path}", registrar.admin));
    c
}

/// `rspregistrar` with short peer timers, ENRP on 192.0.2.1:9911 (RSPLIB drops loopback
/// addresses), peering with `enrpd`'s legacy ENRP listener; its log goes to `log`.
fn rspregistrar(lab: &Lab, log: &str) -> Proc {
    let log = std::fs::File::create(lab.path(log)).expect("log file");
    let err = log.try_clone().expect("log file");
    Proc(
        Command::new("rspregistrar")
            .args([
                &format!("-asap={DOC_ADDR}:3873"),
                &format!("-enrp={DOC_ADDR}:9911"),
                &format!("-peer={DOC_ADDR}:9901"),
                &format!("-identifier={RSPLIB_ID}"),
                "-minaddressscope=loopback",
                "-asapannounce=off",
                "-enrpannounce=off",
                "-peerheartbeatcycle=1000",
                "-peermaxtimelastheard=3000",
                "-peermaxtimenoresponse=1000",
                "-takeoverexpiryinterval=3000",
            ])
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn rspregistrar"),
    )
}

/// `enrpd` with the legacy listeners (ENRP only with `enrp`) and short peer timers.
fn enrpd(lab: &Lab, enrp: bool) -> Registrar {
    let asap = format!("127.0.0.1:3863+{DOC_ADDR}:3863");
    let enrp_at = format!("{DOC_ADDR}:9901+127.0.0.1:9901");
    let peer = format!("sctp:{DOC_ADDR}:9911={RSPLIB_ID}");
    let mut args = vec![
        "--legacy-asap-listen",
        &asap,
        "--legacy-namespace",
        "rsplib",
        "--peer-heartbeat-ms",
        "1000",
        "--peer-last-heard-ms",
        "3000",
        "--peer-no-response-ms",
        "2000",
        "--takeover-expiry-ms",
        "3000",
        "--mentor-timeout-ms",
        "3000",
        // Also the grace of taken-over PEs: long enough to see them moved.
        "--keep-alive-timeout-ms",
        "20000",
    ];
    if enrp {
        args.extend(["--legacy-enrp-listen", &enrp_at, "--legacy-peer", &peer]);
    }
    lab.start("a", &args)
}

/// Prints a log file when the test fails (the guest's files are gone after the run).
struct ShowOnFailure(std::path::PathBuf);

impl Drop for ShowOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.0.display());
        }
    }
}

/// `rspterminal` through `registrar` to `pool`: whether the line came back.
fn rspterminal(registrar: &str, pool: &str, line: &str) -> bool {
    let mut c = Command::new("timeout");
    c.args(["8", "rspterminal", "-asapannounce=off"])
        .arg(format!("-poolhandle={pool}"))
        .arg(format!("-registrar={registrar}"));
    let out = with_input(c, line);
    String::from_utf8_lossy(&out.stdout).contains(line)
}

/// Retries `reached` for at most a minute; prints how long it took.
fn until(what: &str, mut reached: impl FnMut() -> bool) {
    let start = now();
    while !reached() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what}: not within 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("{what}: after {:?}", start.elapsed());
}

#[test]
fn enrpd_and_rspregistrar_peer_over_legacy_enrp() {
    if !sctp_here() || !rsplib_here() {
        return;
    }
    let lab = Lab::new();
    let token = lab.init("enrp-1", "a");
    {
        let a = lab.start("a", &[]);
        lab.create_namespace(&a, &token, "rsplib");
    }
    // (f) Without the legacy ENRP listener (and so without legacy peers), rspregistrar
    // cannot peer: its associations to 9901 have nowhere to go; enrpd never lists it.
    {
        let a = enrpd(&lab, false);
        assert!(!a.line.contains("legacy ENRP"), "{}", a.line);
        let _r = rspregistrar(&lab, "rspregistrar-0.log");
        std::thread::sleep(Duration::from_secs(10));
        let peers = admin_get(&lab, &a, &token, "/v1/peers")
            .output()
            .expect("curl");
        let peers = String::from_utf8_lossy(&peers.stdout);
        println!("without --legacy-enrp-listen: /v1/peers = {peers}");
        assert!(
            !peers.contains("\"state\":\"active\""),
            "peered without a legacy ENRP listener: {peers}"
        );
    }
    let a = enrpd(&lab, true);
    assert!(
        a.line.contains("legacy ENRP (plain SCTP) on sctp:"),
        "{}",
        a.line
    );
    let r = rspregistrar(&lab, "rspregistrar-1.log");
    let _log1 = ShowOnFailure(lab.path("rspregistrar-1.log"));
    let started = now();
    let peers = eventually(
        Duration::from_secs(60),
        "rspregistrar active at enrpd",
        || admin_get(&lab, &a, &token, "/v1/peers"),
        |out| out.contains(RSPLIB_ID) && out.contains("\"state\":\"active\""),
    );
    println!("peered after {:?}: {}", started.elapsed(), peers.trim());
    // A PE at each registrar, each in its own pool so that a PU reaching one proves the
    // way it came.
    let pe_at = |registrar: &str, pool: &str, id: &str| {
        spawn(Command::new("rspserver").args([
            "-echo",
            &format!("-poolhandle={pool}"),
            &format!("-registrar={registrar}"),
            &format!("-identifier={id}"),
            "-asapannounce=off",
            "-rereginterval=2500",
        ]))
    };
    let _pe1 = pe_at(&format!("{DOC_ADDR}:3873"), "EchoPool", "0x0000aaaa");
    let _pe2 = pe_at(&format!("{DOC_ADDR}:3863"), "EchoPool2", "0x0000bbbb");
    // (a) rspregistrar's PE through enrpd's legacy ASAP listener.
    let legacy_asap = format!("sctp:{DOC_ADDR}:3863");
    until(
        "rsp pu via enrpd reaches the PE registered at rspregistrar",
        || {
            let mut c = lab.rsp(&[
                "pu",
                "EchoPool",
                "--insecure-legacy",
                "--cert",
                "pki/pu-client-1.pem",
            ]);
            c.args(["--registrar", &legacy_asap]);
            let out = with_input(c, "hello via enrpd");
            String::from_utf8_lossy(&out.stdout).trim() == "hello via enrpd"
        },
    );
    // (b) enrpd's PE through rspregistrar.
    let rsplib_asap = format!("{DOC_ADDR}:3873");
    until(
        "rspterminal via rspregistrar reaches the PE registered at enrpd",
        || rspterminal(&rsplib_asap, "EchoPool2", "hello via rspregistrar"),
    );
    // (c) The checksums agree: enrpd's copy of RSPLIB's PEs has the checksum RSPLIB
    // announces, sample after sample (a mismatch would show, and re-sync, every time).
    for _ in 0..5 {
        let peers = eventually(
            Duration::from_secs(30),
            "checksum agrees",
            || admin_get(&lab, &a, &token, "/v1/peers"),
            |out| out.contains("\"checksum_match\":true"),
        );
        assert!(!peers.contains("\"checksum_match\":false"), "{peers}");
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("checksums agree over 5 samples");
    // (d) kill -9 rspregistrar: enrpd takes over its PE (home moves to enrpd).
    drop(r);
    let killed = now();
    let pool = eventually(
        Duration::from_secs(60),
        "enrpd took over rspregistrar's PE",
        || admin_get(&lab, &a, &token, "/v1/namespaces/rsplib/pools/EchoPool"),
        |out| {
            out.contains("0x0000aaaa")
                && !out.contains(&format!("\"home_registrar\":\"{RSPLIB_ID}\""))
        },
    );
    println!(
        "enrpd took over after {:?}: {}",
        killed.elapsed(),
        pool.trim()
    );
    // (e) rspregistrar again; once it knows enrpd's PE, kill enrpd: rspregistrar takes
    // it over and still resolves it.
    let r = rspregistrar(&lab, "rspregistrar-2.log");
    let _log2 = ShowOnFailure(lab.path("rspregistrar-2.log"));
    until("rspregistrar (restarted) knows enrpd's PE again", || {
        rspterminal(&rsplib_asap, "EchoPool2", "hello again")
    });
    drop(a);
    let killed = now();
    let log = lab.path("rspregistrar-2.log");
    until("rspregistrar took over enrpd's PEs", || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.lines()
                .any(|line| line.contains("Takeover of peer") && line.contains("completed"))
        })
    });
    println!("rspregistrar's takeover after {:?}", killed.elapsed());
    until(
        "rspterminal via rspregistrar still reaches enrpd's PE",
        || rspterminal(&rsplib_asap, "EchoPool2", "hello after the takeover"),
    );
    drop(r);
}
