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

#[test]
fn rsp_takes_defaults_from_a_config_file_that_flags_and_variables_override() {
    // Issue 5: defaults from a config file so that the quickstart commands stay short.
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;

    use crate::support::Lab;

    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(1000, 2000);
    // Relative paths are from the file's directory, wherever rsp runs.
    let config = lab.path("rsp.toml");
    std::fs::write(
        &config,
        format!(
            "cert = \"pki/pu-client-1.pem\"\nca = \"pki/ca.pem\"\nregistrars = [\"{}\"]\n",
            registrar.addr
        ),
    )
    .expect("write rsp.toml");
    let rsp = || {
        let mut c = Command::new(bin("rsp"));
        for v in [
            "RSP_CERT",
            "RSP_KEY",
            "RSP_CA",
            "RSP_REGISTRAR",
            "RSP_NAMESPACE",
            "RSP_CONFIG",
        ] {
            c.env_remove(v);
        }
        c.current_dir(std::env::temp_dir());
        c
    };
    // A flag overrides the file's certificate: this one is a PE.
    let mut pe = rsp()
        .args(["pe", "--pool", "echo", "--serve", "echo", "--config"])
        .arg(&config)
        .arg("--cert")
        .arg(lab.path("pki/pe-echo-1.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let mut line = String::new();
    BufReader::new(pe.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("rsp pe reports");
    assert!(line.starts_with("registered with"), "{line}");

    // RSP_CONFIG alone: certificate, trust bundle and registrar all from the file.
    let out = rsp()
        .args(["resolve", "echo", "--json"])
        .env("RSP_CONFIG", &config)
        .output()
        .expect("rsp resolve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // A variable overrides the file: no registrar there.
    let out = rsp()
        .args(["resolve", "echo", "--config"])
        .arg(&config)
        .env("RSP_REGISTRAR", "127.0.0.1:1")
        .output()
        .expect("rsp resolve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no registrar reachable"), "{stderr}");

    // A bad file: one line naming the file, the line and the reason; nothing runs.
    let bad = lab.path("bad.toml");
    std::fs::write(&bad, "cert = \"x.pem\"\nregistrar = \"127.0.0.1:3864\"\n").expect("write");
    let out = rsp()
        .args(["resolve", "echo", "--config"])
        .arg(&bad)
        .output()
        .expect("rsp resolve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: the config file")
            && stderr.contains("bad.toml line 2")
            && stderr.contains("unknown field `registrar`"),
        "{stderr}"
    );
    let _ = pe.kill();
    let _ = pe.wait();
}
