//! The line protocol between a bench and the server it runs as a child process (itself,
//! started with a child argument): the child reads commands from its stdin, the parent
//! reads the child's answers line by line.

use std::io::BufRead;

use tokio::sync::mpsc;

/// The child's stdin, line by line, as a channel (read on a thread of its own, so that
/// the child's runtime never blocks on it); closed at EOF.
pub fn commands() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// One line from a child, trimmed; panics if the child's stdout fails.
pub fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("child stdout");
    line.trim().to_owned()
}
