//! `rsp-pki`: bootstrap a PKI for a trust domain and issue certificates.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use rsp_pki::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        // Usage errors: clap's message and hints, on one line, exit 2.
        Err(e) => {
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(&cli, time::OffsetDateTime::now_utc()) {
        Ok(out) => {
            // A closed pipe (`rsp-pki list | head`) is not a failure.
            let _ = writeln!(std::io::stdout(), "{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let code = if err.is_usage() { 2 } else { 1 };
            let err = anyhow::Error::new(err);
            eprintln!("error: {err:#}");
            ExitCode::from(code)
        }
    }
}
