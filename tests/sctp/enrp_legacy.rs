//! `enrpd` and RSPLIB's `rspregistrar` peering over plain ENRP/SCTP (issue 8): each
//! learns the other's PEs, the checksums agree, each takes over the other's PEs when it
//! is killed, and without the legacy ENRP listener there is no peering at all.
//!
//! Three registrars: `enrpd` and two `rspregistrar`s, all peered. RSPLIB 3.4.4 completes
//! a takeover only when a live peer acknowledges it, so with `enrpd` as its only peer its
//! takeover of `enrpd` would just expire; and it never sends TAKEOVER_SERVER, which
//! `enrpd` does not need (docs/RSPLIB.md §0.9, §4).

use std::process::Command;
use std::time::Duration;

use super::{
    DOC_ADDR, Lab, Proc, Registrar, eventually, now, rsplib_here, sctp_here, spawn, with_input,
};

/// The two RSPLIB registrars: Server ID (`rspregistrar -identifier`), ASAP port, ENRP
/// port. Two, because RSPLIB 3.4.4 completes a takeover only on an acknowledgement: with
/// enrpd as its only peer, its takeover of enrpd would expire (docs/RSPLIB.md §4).
const R1: (&str, u16, u16) = ("0x11111111", 3873, 9911);
const R2: (&str, u16, u16) = ("0x22222222", 3874, 9912);

/// `rspregistrar` `me` with short peer timers, ENRP on 192.0.2.1 (RSPLIB drops loopback
/// addresses), peering with `enrpd`'s legacy ENRP listener and with `other`; its log goes
/// to `log`. (`stdbuf` is coreutils'; the guest runs the host's files.)
fn rspregistrar(lab: &Lab, log: &str, me: (&str, u16, u16), other: (&str, u16, u16)) -> Proc {
    let log = std::fs::File::create(lab.path(log)).expect("log file");
    let err = log.try_clone().expect("log file");
    let (id, asap, enrp) = me;
    Proc(
        // Line-buffered, so that the log can be read while it runs.
        Command::new("stdbuf")
            .args(["-oL", "-eL", "rspregistrar"])
            .args([
                &format!("-asap={DOC_ADDR}:{asap}"),
                &format!("-enrp={DOC_ADDR}:{enrp}"),
                &format!("-peer={DOC_ADDR}:9901"),
                &format!("-peer={DOC_ADDR}:{}", other.2),
                &format!("-identifier={id}"),
                "-minaddressscope=loopback",
                "-asapannounce=off",
                "-enrpannounce=off",
                "-peerheartbeatcycle=1000",
                "-peermaxtimelastheard=3000",
                "-peermaxtimenoresponse=1000",
                "-takeoverexpiryinterval=3000",
                // A taken-over PE stays while its (failing, §0.9) H=1 keep-alive times out.
                "-endpointkeepalivetimeoutinterval=30000",
                // Warnings (its takeovers) and above; the default logs nothing.
                "-loglevel=3",
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
    let peer1 = format!("sctp:{DOC_ADDR}:{}={}", R1.2, R1.0);
    let peer2 = format!("sctp:{DOC_ADDR}:{}={}", R2.2, R2.0);
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
        args.extend(["--legacy-enrp-listen", &enrp_at]);
        args.extend(["--legacy-peer", &peer1, "--legacy-peer", &peer2]);
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
fn echoed(registrar: &str, pool: &str, line: &str) -> bool {
    crate::rspterminal(registrar, pool, line).contains(line)
}

/// Retries `reached` for at most 90 s; prints how long it took.
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
        let _r = rspregistrar(&lab, "rspregistrar-0.log", R1, R2);
        std::thread::sleep(Duration::from_secs(10));
        let peers = lab.admin(&a, &token, "/v1/peers").output().expect("curl");
        let peers = String::from_utf8_lossy(&peers.stdout);
        println!("without --legacy-enrp-listen: /v1/peers = {peers}");
        assert!(
            !peers.contains("\"state\":\"active\""),
            "peered without a legacy ENRP listener: {peers}"
        );
    }
    // From here on tshark checks every plain ASAP and ENRP message on the wire.
    let capture = crate::capture::Capture::start(lab.dir.path());
    let a = enrpd(&lab, true);
    assert!(
        a.line.contains("legacy ENRP (plain SCTP) on sctp:"),
        "{}",
        a.line
    );
    let r1 = rspregistrar(&lab, "r1.log", R1, R2);
    let _log1 = ShowOnFailure(lab.path("r1.log"));
    let _r2 = rspregistrar(&lab, "r2.log", R2, R1);
    let _log2 = ShowOnFailure(lab.path("r2.log"));
    let started = now();
    let both_active = |out: &str| {
        out.contains(R1.0) && out.contains(R2.0) && out.matches("\"state\":\"active\"").count() == 2
    };
    let peers = eventually(
        Duration::from_secs(60),
        "both rspregistrars active at enrpd",
        || lab.admin(&a, &token, "/v1/peers"),
        both_active,
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
    let _pe1 = pe_at(&format!("{DOC_ADDR}:{}", R1.1), "EchoPool", "0x0000aaaa");
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
    let rsplib_asap = format!("{DOC_ADDR}:{}", R1.1);
    until(
        "rspterminal via rspregistrar reaches the PE registered at enrpd",
        || echoed(&rsplib_asap, "EchoPool2", "hello via rspregistrar"),
    );
    // (c) The checksums agree: enrpd's copy of RSPLIB's PEs has the checksum RSPLIB
    // announces, sample after sample (a mismatch would show, and re-sync, every time).
    for _ in 0..5 {
        let peers = eventually(
            Duration::from_secs(30),
            "checksum agrees",
            || lab.admin(&a, &token, "/v1/peers"),
            |out| out.matches("\"checksum_match\":true").count() == 2,
        );
        assert!(!peers.contains("\"checksum_match\":false"), "{peers}");
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("checksums agree over 5 samples");
    if let Some(c) = capture {
        let (asap, enrp) = c.check(
            &["Registration", "Handle resolution response"],
            &[
                "Presence",
                "Handle table request",
                "Handle table response",
                "Handle update",
                "List request",
                "List response",
            ],
        );
        println!("tshark decoded {asap} ASAP and {enrp} ENRP messages, none malformed");
    }
    // enrpd's Server ID: the home of the PE registered with it.
    let pool2 = lab
        .admin(&a, &token, "/v1/namespaces/rsplib/pools/EchoPool2")
        .output()
        .expect("curl");
    let pool2 = String::from_utf8_lossy(&pool2.stdout).into_owned();
    let enrpd_id = pool2
        .split("\"home_registrar\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no home registrar in {pool2}"))
        .to_owned();
    // (d) kill -9 rspregistrar R1: enrpd takes over its PE (the lower Server ID of the two
    // survivors; RSPLIB sends no TAKEOVER_SERVER, enrpd's ADD_PE tells R2).
    drop(r1);
    let killed = now();
    let home = format!("\"home_registrar\":\"{enrpd_id}\"");
    let pool = eventually(
        Duration::from_secs(60),
        "enrpd took over R1's PE",
        || lab.admin(&a, &token, "/v1/namespaces/rsplib/pools/EchoPool"),
        |out| out.contains("0x0000aaaa") && out.contains(&home),
    );
    println!(
        "enrpd ({enrpd_id}) took over after {:?}: {}",
        killed.elapsed(),
        pool.trim()
    );
    // enrpd dialed the PE's ASAP transport over plain SCTP with the H=1 keep-alive: the
    // PE, which knows no registrar but R1, re-registers at enrpd as the same registrant
    // (its address), audited as such.
    let since = crate::unix_ms() - killed.elapsed().as_millis();
    let path = format!("/v1/audit?pool=EchoPool&action=reregister&since_ms={since}");
    let moved = eventually(
        Duration::from_secs(60),
        "R1's PE re-registered at enrpd after the H=1 keep-alive",
        || lab.admin(&a, &token, &path),
        |out| out.contains("0x0000aaaa") && out.contains("legacy.invalid"),
    );
    println!("re-registered at enrpd: {}", moved.trim());
    // (e) R1 again; once it knows enrpd's PE, kill enrpd: an rspregistrar takes it over
    // (R2 acknowledging R1's takeover, or the other way round) and R1 still resolves it.
    let _r1 = rspregistrar(&lab, "r1-again.log", R1, R2);
    let _log3 = ShowOnFailure(lab.path("r1-again.log"));
    until("R1 (restarted) knows enrpd's PE again", || {
        echoed(&rsplib_asap, "EchoPool2", "hello again")
    });
    drop(a);
    let killed = now();
    let completed = format!(
        "Takeover of peer ${} completed",
        enrpd_id.trim_start_matches("0x")
    );
    until("an rspregistrar took over enrpd's PEs", || {
        ["r1-again.log", "r2.log"]
            .iter()
            .any(|log| std::fs::read_to_string(lab.path(log)).is_ok_and(|l| l.contains(&completed)))
    });
    println!("RSPLIB's takeover of enrpd after {:?}", killed.elapsed());
    until("rspterminal via R1 still reaches enrpd's PE", || {
        echoed(&rsplib_asap, "EchoPool2", "hello after the takeover")
    });
}
