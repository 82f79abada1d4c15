//! Running the workspace's real binaries from a test: shared by the `e2e` and `sctp`
//! test targets (each includes this file with `#[path]`).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// A binary of the workspace, built by `cargo build --workspace --bins` next to this test.
pub(crate) fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/e2e-… → target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (`bash .ci/run` does)",
        path.display()
    );
    path
}

/// Runs a binary to completion, failing the test with its output if it fails.
pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The admin token `enrpd init` printed (the word that starts with `rsp_`).
pub(crate) fn admin_token(init: &Output) -> String {
    String::from_utf8_lossy(&init.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("rsp_"))
        .expect("enrpd init prints the admin token")
        .to_owned()
}

/// The first line of `enrpd run`: "enrpd: serving ASAP on A (Server ID X), admin API on
/// https://B" and, with ENRP on, ", ENRP on C".
#[allow(dead_code)] // each test target reads what it needs (`sctp` the line only)
pub(crate) struct Serving {
    /// The line as printed.
    pub(crate) line: String,
    /// The addresses in it, in order: ASAP, the admin API, ENRP.
    pub(crate) addrs: Vec<SocketAddr>,
    /// X, as printed (`0x…`); empty if the line has none.
    pub(crate) server_id: String,
}

/// Reads the first line of `child` (an `enrpd run` with its stdout piped; the pipe is
/// taken, later lines are not read).
pub(crate) fn serving(child: &mut Child) -> Serving {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("enrpd prints where it serves");
    let addrs = line
        .split([' ', ',', '/', ')', '\n'])
        .filter_map(|w| w.parse().ok())
        .collect();
    let server_id = line
        .split_once("(Server ID ")
        .and_then(|(_, rest)| rest.split(')').next())
        .unwrap_or_default()
        .to_owned();
    Serving {
        line,
        addrs,
        server_id,
    }
}
