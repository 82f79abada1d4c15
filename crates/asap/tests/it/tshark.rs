//! The independent check of our bytes (spec §13): one message of every ASAP and ENRP type
//! is encoded by us, wrapped in SCTP DATA chunks with PPID 11/12 by `text2pcap`, and
//! dissected by Wireshark's own ASAP and ENRP dissectors in `tshark`. No frame may be
//! flagged malformed, and the message names tshark prints must be ours.
//!
//! Skips with a message where tshark is not installed, unless `RSP_REQUIRE_TSHARK=1`
//! (CI sets it, and installs tshark).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use asap::wire::{AsapMsg, EnrpMsg};

use crate::samples::{asap_messages, enrp_messages};

fn tools_present() -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let present = ok("tshark") && ok("text2pcap");
    if !present {
        assert!(
            std::env::var_os("RSP_REQUIRE_TSHARK").is_none(),
            "RSP_REQUIRE_TSHARK is set but tshark/text2pcap are missing"
        );
        eprintln!("skipped: tshark and text2pcap not installed (apt-get install tshark)");
    }
    present
}

/// `od -Ax -tx1`-style dump: each message a packet of its own for text2pcap.
fn hexdump(messages: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for m in messages {
        for (i, chunk) in m.chunks(16).enumerate() {
            let _ = write!(s, "{:06x}", i * 16);
            for b in chunk {
                let _ = write!(s, " {b:02x}");
            }
            s.push('\n');
        }
    }
    s
}

/// Runs text2pcap + tshark over `messages` (SCTP port and PPID as given) and returns,
/// per frame, the message name tshark printed and any malformed/expert complaint.
fn dissect(
    dir: &Path,
    name: &str,
    port: u16,
    ppid: u8,
    messages: &[Vec<u8>],
) -> Vec<(String, String)> {
    let txt = dir.join(format!("{name}.txt"));
    let pcap = dir.join(format!("{name}.pcap"));
    std::fs::write(&txt, hexdump(messages)).expect("write hex dump");
    let st = Command::new("text2pcap")
        .args(["-q", "-S", &format!("{port},{port},{ppid}")])
        .arg(&txt)
        .arg(&pcap)
        .status()
        .expect("run text2pcap");
    assert!(st.success(), "text2pcap failed");
    let verbose = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .arg("-V")
        .output()
        .expect("run tshark -V");
    assert!(verbose.status.success(), "tshark -V failed");
    let text = String::from_utf8_lossy(&verbose.stdout);
    let prefix = format!("    Type: {} ", name.to_uppercase());
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.rsplit_once(" (").map_or(rest, |(n, _)| n).to_owned())
        .collect();
    let fields = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-e",
            "_ws.malformed",
            "-e",
            "_ws.expert.message",
        ])
        .output()
        .expect("run tshark -T fields");
    assert!(fields.status.success(), "tshark -T fields failed");
    let complaints: Vec<String> = String::from_utf8_lossy(&fields.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(
        names.len(),
        messages.len(),
        "one {name} message per frame:\n{text}"
    );
    assert_eq!(complaints.len(), messages.len());
    names.into_iter().zip(complaints).collect()
}

#[test]
fn tshark_decodes_every_message_type_without_complaint() {
    if !tools_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("rsp-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let asap = asap_messages();
    let bytes: Vec<Vec<u8>> = asap
        .iter()
        .map(|m| m.to_bytes().expect("encodes"))
        .collect();
    let frames = dissect(&dir, "asap", 3863, 11, &bytes);
    let mut types_seen = std::collections::BTreeSet::new();
    for ((tshark_name, complaint), m) in frames.iter().zip(&asap) {
        assert_eq!(complaint, "", "tshark complains about {m:?}");
        assert_eq!(tshark_name, m.name(), "names differ for {m:?}");
        types_seen.insert(m.msg_type().0);
    }
    assert_eq!(types_seen.len(), 14, "every ASAP type is covered");

    let enrp = enrp_messages();
    let bytes: Vec<Vec<u8>> = enrp
        .iter()
        .map(|m| m.to_bytes().expect("encodes"))
        .collect();
    let frames = dissect(&dir, "enrp", 9901, 12, &bytes);
    let mut types_seen = std::collections::BTreeSet::new();
    for ((tshark_name, complaint), m) in frames.iter().zip(&enrp) {
        assert_eq!(complaint, "", "tshark complains about {m:?}");
        assert_eq!(tshark_name, m.name(), "names differ for {m:?}");
        types_seen.insert(m.msg_type().0);
    }
    assert_eq!(types_seen.len(), 10, "every ENRP type is covered");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn samples_round_trip() {
    for m in asap_messages() {
        let b = m.to_bytes().expect("encodes");
        assert_eq!(AsapMsg::decode(&b).expect("decodes").msg, m);
    }
    for m in enrp_messages() {
        let b = m.to_bytes().expect("encodes");
        assert_eq!(EnrpMsg::decode(&b).expect("decodes").msg, m);
    }
}
