//! The command line: the measurements and every option (`rsp-bench --help`).

use std::time::Duration;

use clap::Parser;

use crate::pin::Cpus;

/// Measurements, in the order they run.
pub(crate) const ALL: &[&str] = &[
    "resolve",
    "register",
    "handshake",
    "churn",
    "failover",
    "keepalive",
];

#[derive(Parser, Debug)]
#[command(
    name = "rsp-bench",
    about = "rsp's registrar under load, beside a TLS floor and etcd"
)]
pub(crate) struct Opts {
    /// Seconds each system runs in each round.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Rounds: floor, rsp and etcd take turns in each (after an untimed warm-up round).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Concurrent clients (PUs resolving, PEs registering), each on its own connection.
    #[arg(long, default_value_t = 64)]
    pub(crate) clients: usize,
    /// Concurrent connections of the handshake and churn measurements.
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: usize,
    /// PE IDs each registering client of the registration measurement cycles through:
    /// after the first N registrations it re-registers the same N PEs, so that the
    /// handlespace and its keep-alives stay at clients × N PEs. 0: a new PE every time,
    /// whose keep-alives then grow with the run and are charged to the registrations.
    #[arg(long, default_value_t = 100)]
    pub(crate) register_ids: u32,
    /// PEs of the keep-alive load.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) pes: usize,
    /// etcd leases of the keep-alive load (default: as many as --pes, at most 10,000:
    /// etcd-client opens one keep-alive stream per lease, which costs etcd ~95 KB each).
    #[arg(long)]
    pub(crate) etcd_leases: Option<usize>,
    /// Keep-alive interval of the keep-alive load, in seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) keep_alive_secs: u64,
    /// Length of the keep-alive load's CPU window, in seconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) window_secs: u64,
    /// Failover trials (each kills one PE of four).
    #[arg(long, default_value_t = 5)]
    pub(crate) trials: usize,
    /// PUs of the failover measurement.
    #[arg(long, default_value_t = 16)]
    pub(crate) pus: usize,
    /// Only these measurements (comma-separated): resolve, register, handshake, churn,
    /// failover, keepalive.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Also measure resolutions and registrations with the registrar on PostgreSQL: the
    /// server's URL (`postgres://rsp@localhost/postgres?host=/tmp/…`, as `.ci/postgres
    /// start` prints); each registrar child gets a fresh database there, dropped after it.
    /// The rows are labelled `rsp-pg`; their cost per operation is given for the registrar
    /// and for the registrar and the PostgreSQL server together (its postmaster and every
    /// backend: found through the URL's Unix socket, or --postgres-pid).
    #[arg(long, value_name = "URL")]
    pub(crate) postgres: Option<String>,
    /// The PID of the --postgres server's postmaster (the first line of
    /// DATA/postmaster.pid), for a URL over TCP; the server must run on this machine.
    #[arg(long, value_name = "PID", requires = "postgres")]
    pub(crate) postgres_pid: Option<u32>,
    /// Leave etcd out even if it is installed.
    #[arg(long)]
    pub(crate) no_etcd: bool,
    /// Print JSON instead of Markdown tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the JSON report to this file (with the tables on stdout).
    #[arg(long)]
    pub(crate) json_file: Option<std::path::PathBuf>,
    /// Pin the servers under test (floor, rsp's registrar, etcd) to these CPUs, as
    /// taskset's list: `1`, `0-1`, `0,2-3`. Each server runs as many tokio workers as it
    /// has CPUs.
    #[arg(long, value_name = "LIST")]
    pub(crate) server_cpus: Option<Cpus>,
    /// Pin the load generators (this process's runtime, and the failover measurement's
    /// PE processes) to these CPUs.
    #[arg(long, value_name = "LIST")]
    pub(crate) client_cpus: Option<Cpus>,
    /// A smoke run of a few seconds with tiny numbers (checks that everything works).
    #[arg(long)]
    pub(crate) quick: bool,
    /// The child-process protocol (internal).
    #[arg(long, num_args = 1.., allow_hyphen_values = true, hide = true)]
    pub(crate) child: Vec<String>,
}

impl Opts {
    pub(crate) fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }

    pub(crate) fn round(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}
