//! An independent check of the bytes on the wire: tshark captures the guest's loopback
//! during a scenario, then Wireshark's own ASAP and ENRP dissectors must decode what was
//! sent, and nothing may be flagged malformed (or get an expert warning or error).
//!
//! - Plain scenarios ([`Capture::start`]): every SCTP message with the ASAP (11) or ENRP
//!   (12) PPID must decode as ASAP or ENRP.
//! - TLS scenarios ([`Capture::start_tls`]): the processes write the NSS key log
//!   (`SSLKEYLOGFILE`, see `trust::key_log_warning`) into the test's directory; tshark
//!   decodes PPIDs 11 and 12 as TLS with it (`rserpool_tls_sctp.lua`), every encrypted
//!   record must decrypt, and every SCTP message with application data must decode as ASAP
//!   (PPID 11) or ENRP (PPID 12), framed by the spec's `rserpool_tcp.lua` (a copy). The
//!   check assumes that no ASAP/ENRP message spans TLS records: rustls puts each write (a
//!   few whole messages) in one record of up to 16 KiB.
//!
//! The pool user ↔ PE data channel (PPID 0) is not ASAP or ENRP and is not checked.
//! Without tshark the check is skipped (said so), except under `RSP_REQUIRE_SCTP=1` (the
//! guest), where a missing tshark fails the test.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use asap::wire::MsgType;

/// A running capture of SCTP on `lo`.
pub(crate) struct Capture {
    child: Child,
    file: PathBuf,
    /// The NSS key log of a TLS capture.
    key_log: Option<PathBuf>,
}

/// The Lua scripts that decode ASAP and ENRP inside TLS over SCTP (see their headers).
fn lua(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sctp")
        .join(name)
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
        Some(Self {
            child,
            file,
            key_log: None,
        })
    }

    /// A capture of TLS scenarios: run every process with `SSLKEYLOGFILE` set to
    /// [`Self::key_log`], so that the check can decrypt.
    pub(crate) fn start_tls(dir: &Path) -> Option<Self> {
        let mut capture = Self::start(dir)?;
        capture.key_log = Some(dir.join("tls-keys.log"));
        Some(capture)
    }

    /// The key log file (TLS captures); `None` for plain ones.
    pub(crate) fn key_log(&self) -> Option<&Path> {
        self.key_log.as_deref()
    }

    /// `tshark -r` on the capture, decrypting and decoding TLS for a TLS capture.
    fn read(&self) -> Command {
        let mut cmd = Command::new("tshark");
        if let Some(keys) = &self.key_log {
            for script in ["rserpool_tcp.lua", "rserpool_tls_sctp.lua"] {
                cmd.arg("-X")
                    .arg(format!("lua_script:{}", lua(script).display()));
            }
            cmd.arg("-o")
                .arg(format!("tls.keylog_file:{}", keys.display()));
        }
        cmd.arg("-r").arg(&self.file);
        cmd
    }

    /// The standard output of [`Self::read`] with `args`, which must succeed.
    fn output(&self, args: &[&str]) -> String {
        let out = self.read().args(args).output().expect("tshark -r");
        assert!(
            out.status.success(),
            "tshark -r {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `field` of each frame that matches `filter` (empty values left out).
    fn fields(&self, filter: &str, field: &str) -> Vec<String> {
        self.output(&["-Y", filter, "-T", "fields", "-e", field])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The message types in `field` over all frames (tshark prints several messages of
    /// one frame comma-separated), each with its name (`name`), lower case.
    fn names(&self, field: &str, name: fn(MsgType) -> Option<&'static str>) -> Vec<String> {
        self.fields(field, field)
            .iter()
            .flat_map(|l| l.split(','))
            .map(|t| {
                let t = t.trim();
                let n = t
                    .strip_prefix("0x")
                    .map_or_else(|| t.parse(), |h| u8::from_str_radix(h, 16))
                    .unwrap_or_else(|_| panic!("{field} {t:?} is not a number"));
                name(MsgType(n))
                    .unwrap_or_else(|| panic!("unknown {field} {n}"))
                    .to_lowercase()
            })
            .collect()
    }

    /// Frames (numbers) with a TLS record that tshark could not decrypt: in its `-O tls`
    /// output, a record with an "Opaque Type" (encrypted, TLS 1.3) but no "[Content
    /// Type: …]" (which only decryption reveals).
    fn undecrypted(&self) -> Vec<String> {
        let text = self.output(&["-Y", "tls", "-O", "tls"]);
        let mut bad = Vec::new();
        let mut frame = String::new();
        // (opaque, decrypted) of the record being read.
        let mut record: Option<(bool, bool)> = None;
        let mut close = |frame: &str, record: Option<(bool, bool)>| {
            if record == Some((true, false)) && bad.last().is_none_or(|f| f != frame) {
                bad.push(frame.to_owned());
            }
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Frame ") {
                close(&frame, record.take());
                frame = rest.split(':').next().unwrap_or_default().to_owned();
            } else if line.starts_with("    ") && line.contains(" Record Layer") {
                close(&frame, record.replace((false, false)));
            } else if let Some((opaque, decrypted)) = record.as_mut() {
                let line = line.trim_start();
                *opaque |= line.starts_with("Opaque Type:");
                *decrypted |= line.starts_with("[Content Type:");
            }
        }
        close(&frame, record);
        bad
    }

    /// Stops the capture and checks it: at least one message of each of `asap` and
    /// `enrp` (message type names as `asap::wire` and tshark say them, any case, e.g.
    /// "Registration response"), every PPID 11/12 message decoded (decrypted first in a
    /// TLS capture), nothing malformed or with an expert warning or error. Returns how
    /// many ASAP and ENRP messages it saw.
    pub(crate) fn check(mut self, asap: &[&str], enrp: &[&str]) -> (usize, usize) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        // Expert severities: 0x600000 warning, 0x800000 error (chat and notes pass).
        let malformed = self.fields(
            "_ws.malformed || _ws.expert.severity >= 0x600000",
            "frame.number",
        );
        assert!(malformed.is_empty(), "malformed frames: {malformed:?}");
        let ppid = "(sctp.data_payload_proto_id == 11 || sctp.data_payload_proto_id == 12)";
        let undecoded = if self.key_log.is_some() {
            let undecrypted = self.undecrypted();
            assert!(
                undecrypted.is_empty(),
                "TLS records on PPID 11/12 not decrypted, frames {undecrypted:?}"
            );
            // Handshake and alert records carry no ASAP/ENRP: only application data.
            let app = "tls.record.content_type == 23";
            self.fields(
                &format!(
                    "({ppid} && !tls) || (sctp.data_payload_proto_id == 11 && {app} && !asap) \
                     || (sctp.data_payload_proto_id == 12 && {app} && !enrp)"
                ),
                "frame.number",
            )
        } else {
            self.fields(
                "(sctp.data_payload_proto_id == 11 && !asap) || (sctp.data_payload_proto_id == 12 && !enrp)",
                "frame.number",
            )
        };
        assert!(
            undecoded.is_empty(),
            "PPID 11/12 frames not decoded: {undecoded:?}"
        );
        let asap_seen = self.names("asap.message_type", MsgType::asap_name);
        let enrp_seen = self.names("enrp.message_type", MsgType::enrp_name);
        let distinct = |seen: &[String]| seen.iter().cloned().collect::<BTreeSet<_>>();
        for (want, seen, what) in [(asap, &asap_seen, "ASAP"), (enrp, &enrp_seen, "ENRP")] {
            for want in want {
                let want = want.to_lowercase();
                assert!(
                    seen.contains(&want),
                    "no {what} {want} on the wire; seen: {:?}",
                    distinct(seen)
                );
            }
        }
        (asap_seen.len(), enrp_seen.len())
    }
}
