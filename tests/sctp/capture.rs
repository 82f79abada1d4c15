//! An independent check of the bytes on the wire: tshark captures the guest's loopback
//! during a scenario, then every SCTP message with the ASAP (11) or ENRP (12) PPID must
//! decode as ASAP or ENRP, and none may be flagged malformed. (Plaintext only: the TLS
//! scenarios' messages are checked over TCP with a key log, crates/asap/tests/it/tshark.rs.)

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running capture of SCTP on `lo`.
pub(crate) struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts tshark and waits until it captures; `None` (said why) without tshark.
    pub(crate) fn start(dir: &Path) -> Option<Self> {
        let file = dir.join("sctp.pcapng");
        let child = Command::new("tshark")
            .args(["-i", "lo", "-f", "sctp", "-q", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            assert!(
                std::env::var_os("RSP_REQUIRE_SCTP").is_none(),
                "RSP_REQUIRE_SCTP is set but tshark is missing"
            );
            eprintln!("not checked on the wire: tshark is not installed");
            return None;
        };
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        for line in lines.by_ref() {
            let line = line.expect("tshark's output");
            if line.contains("Capturing on") {
                break;
            }
        }
        // Keep draining its messages so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(Self { child, file })
    }

    /// Stops the capture and checks it: at least one message of each of `asap` and
    /// `enrp` (message type names as tshark prints them, e.g. "Registration"), every
    /// PPID 11/12 message decoded, none malformed. Returns how many ASAP and ENRP
    /// messages it saw.
    pub(crate) fn check(mut self, asap: &[&str], enrp: &[&str]) -> (usize, usize) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let fields = |filter: &str, field: &str| -> Vec<String> {
            let out = Command::new("tshark")
                .arg("-r")
                .arg(&self.file)
                .args(["-Y", filter, "-T", "fields", "-e", field])
                .output()
                .expect("tshark -r");
            assert!(
                out.status.success(),
                "tshark -r: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let malformed = fields("_ws.malformed", "frame.number");
        assert!(malformed.is_empty(), "malformed frames: {malformed:?}");
        let undecoded = fields(
            "(sctp.data_payload_proto_id == 11 && !asap) || (sctp.data_payload_proto_id == 12 && !enrp)",
            "frame.number",
        );
        assert!(
            undecoded.is_empty(),
            "PPID 11/12 frames not decoded: {undecoded:?}"
        );
        let asap_seen = fields("asap", "asap.message_type").join(",");
        let enrp_seen = fields("enrp", "enrp.message_type").join(",");
        // tshark's one-line summaries ("ASAP Registration"), lower case.
        let summaries = |filter: &str| {
            let out = Command::new("tshark")
                .arg("-r")
                .arg(&self.file)
                .args(["-Y", filter])
                .output()
                .expect("tshark -r");
            String::from_utf8_lossy(&out.stdout).to_lowercase()
        };
        let (asap_info, enrp_info) = (summaries("asap"), summaries("enrp"));
        for want in asap {
            let want = want.to_lowercase();
            assert!(
                asap_info.contains(&want),
                "no ASAP {want} on the wire:\n{asap_info}"
            );
        }
        for want in enrp {
            let want = want.to_lowercase();
            assert!(
                enrp_info.contains(&want),
                "no ENRP {want} on the wire:\n{enrp_info}"
            );
        }
        let count = |s: &str| s.split(',').filter(|t| !t.is_empty()).count();
        (count(&asap_seen), count(&enrp_seen))
    }
}
