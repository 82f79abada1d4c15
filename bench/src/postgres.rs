//! The PostgreSQL server of `--postgres`: its postmaster, whose processes' CPU time (the
//! postmaster, a backend per registrar connection, the WAL writer, the checkpointer…) is
//! the store's share of the whole system's cost per operation (docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::str::FromStr as _;

use sqlx::postgres::PgConnectOptions;

use crate::stats::Proc;

/// The postmaster of the server `url` names: `pid` if given (`--postgres-pid`), else the
/// PID PostgreSQL writes on the first line of its socket's lock file
/// (`DIR/.s.PGSQL.PORT.lock`) when the URL reaches it through a Unix socket directory.
/// Either way the process must be a running `postgres` on this machine: a server whose
/// CPU cannot be read is an error, not a figure without it.
pub(crate) fn postmaster(url: &str, pid: Option<u32>) -> Result<Proc, String> {
    let pid = match pid {
        Some(pid) => pid,
        None => {
            let lock = socket_lock(url)?;
            let text = std::fs::read_to_string(&lock)
                .map_err(|e| format!("cannot read {}: {e}", lock.display()))?;
            text.lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .ok_or_else(|| format!("{}: no PID on its first line", lock.display()))?
        }
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|e| format!("PostgreSQL server process {pid}: {e}"))?;
    if comm.trim() != "postgres" {
        return Err(format!(
            "process {pid} is {:?}, not a PostgreSQL server (postgres)",
            comm.trim()
        ));
    }
    Ok(Proc(pid))
}

/// The lock file of the Unix socket `url` connects to, read as sqlx reads the URL (its
/// `host=` and `port=` parameters, `PGHOST`, `PGPORT`).
fn socket_lock(url: &str) -> Result<PathBuf, String> {
    let options = PgConnectOptions::from_str(url).map_err(|e| format!("--postgres: {e}"))?;
    let host = options.get_host();
    let dir = match options.get_socket() {
        Some(dir) => dir.clone(),
        None if host.starts_with('/') => PathBuf::from(host),
        None => {
            return Err(format!(
                "--postgres reaches {host} over TCP: give the server's postmaster PID with \
                 --postgres-pid (the first line of DATA/postmaster.pid) so that its CPU time \
                 is counted; the server must run on this machine"
            ));
        }
    };
    Ok(dir.join(format!(".s.PGSQL.{}.lock", options.get_port())))
}

#[cfg(test)]
mod tests {
    use super::{postmaster, socket_lock};

    #[test]
    fn the_lock_file_is_the_sockets_and_tcp_needs_a_pid() {
        let lock = socket_lock("postgres://rsp@localhost/postgres?host=/tmp/rsp-pg.X");
        assert_eq!(
            lock.as_deref(),
            Ok(std::path::Path::new("/tmp/rsp-pg.X/.s.PGSQL.5432.lock"))
        );
        let lock = socket_lock("postgres://rsp@localhost/postgres?host=/run/pg&port=6543");
        assert_eq!(
            lock.as_deref(),
            Ok(std::path::Path::new("/run/pg/.s.PGSQL.6543.lock"))
        );
        let tcp = socket_lock("postgres://rsp@127.0.0.1:5432/postgres").unwrap_err();
        assert!(tcp.contains("--postgres-pid"), "{tcp}");
    }

    #[test]
    fn a_process_that_is_not_postgres_is_refused() {
        let me = std::process::id();
        let err = postmaster("postgres://rsp@127.0.0.1/postgres", Some(me)).unwrap_err();
        assert!(err.contains("not a PostgreSQL server"), "{err}");
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("postgres://rsp@localhost/db?host={}", dir.path().display());
        let err = postmaster(&url, None).unwrap_err();
        assert!(err.contains(".s.PGSQL.5432.lock"), "{err}");
    }
}
