//! Running the workspace's real binaries from a test: shared by the `e2e` and `sctp`
//! test targets (each includes this file with `#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
