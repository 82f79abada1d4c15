//! `rsp decode`: the codec from the command line.

use std::process::Command;

use crate::support::bin;

#[test]
fn rsp_decode_prints_a_registration_and_reports_bad_input() {
    // Spec §13.6: ASAP REGISTRATION of "EchoPool", PE 0xDEADBEEF, TCP 127.0.0.1:7777.
    let hex = "010000380009000c4563686f506f6f6c000a0028deadbeef00000000000493e0000500101e610000000100087f0000010008000800000001";
    let out = Command::new(bin("rsp"))
        .args(["decode", hex])
        .output()
        .expect("run rsp");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Registration"), "{text}");
    assert!(text.contains("EchoPool"), "{text}");
    assert!(text.contains("0xdeadbeef"), "{text}");
    // A truncated message: one clear line, exit 1.
    let out = Command::new(bin("rsp"))
        .args(["decode", &hex[..40]])
        .output()
        .expect("run rsp");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.trim().lines().count() == 1,
        "{err}"
    );
}
