//! `rsp-bench`: the load generator of issue 9. It drives PEs and PUs over mutual TLS
//! against rsp's registrar and, in the same run and alternating round by round, against
//! two baselines: a minimal TLS server with the same TLS setup (the floor) and etcd 3.4
//! with client certificates. See docs/BENCHMARKS.md for the commands and the figures.
//!
//! Everything is real: the registrar is `enrp::run` in a child process, started as
//! `enrpd run` starts it (SQLite store in a fresh directory, WAL, `synchronous=FULL`,
//! the audit log on), the clients are `asap::client` connections, certificates come from
//! one fresh test PKI (ECDSA P-256). Servers run in child processes so that /proc gives
//! each one's CPU and memory; the load generators stay in this process. All share the
//! machine's cores: throughput figures are for client and server together on this host.
//!
//! The files: `cli` the options; `main` the order of the measurements (`run`);
//! `rounds` closed loops and the alternating rounds; the workloads `throughput`
//! (resolutions, registrations, handshakes, churn), `failover` and `keep_alive`; the
//! systems `child` (the registrar child process), `floor` (the bare TLS server) and `etcd`;
//! `pki`, `stats` (histograms, /proc), `postgres` (the `--postgres` server's processes)
//! and `report` (Markdown and JSON). Message builders
//! and a PE's registration come from `testkit`, shared with the workspace's benches.

// A benchmark driver measures wall time.
#![allow(clippy::disallowed_methods)]

mod child;
mod cli;
mod etcd;
mod failover;
mod floor;
mod keep_alive;
mod pin;
mod pki;
mod postgres;
mod report;
mod rounds;
mod stats;
mod throughput;

use std::io::IsTerminal as _;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use crate::child::ChildProc;
use crate::cli::{ALL, Opts};
use crate::failover::failover;
use crate::keep_alive::{ETCD_LEASES, etcd_keep_alives, keep_alives};
use crate::pki::Pki;
use crate::report::Report;
use crate::throughput::{churn, handshakes, registrations, resolutions};

fn main() {
    let mut opts = Opts::parse();
    if !opts.child.is_empty() {
        child::main(&opts.child);
        return;
    }
    if opts.quick {
        opts.seconds = 1;
        opts.rounds = 1;
        opts.clients = 4;
        opts.connections = 4;
        opts.pes = 500;
        opts.keep_alive_secs = 1;
        opts.window_secs = 2;
        opts.trials = 1;
        opts.pus = 4;
    }
    for o in &opts.only {
        assert!(
            ALL.contains(&o.as_str()),
            "unknown measurement {o:?}: one of {ALL:?}"
        );
    }
    if let Err(e) = pinning(&opts) {
        eprintln!("rsp-bench: {e}");
        std::process::exit(2);
    }
    // Before anything runs: a PostgreSQL server whose CPU cannot be counted stops here.
    let postgres = match &opts.postgres {
        Some(url) => match postgres::postmaster(url, opts.postgres_pid) {
            Ok(postmaster) => Some((url.clone(), postmaster)),
            Err(e) => {
                eprintln!("rsp-bench: {e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    stats::clock_ticks(); // asks `getconf` now, not inside a measurement
    // With --client-cpus, this thread is pinned: the runtime's workers inherit it, and
    // `available_parallelism` (their number) counts those CPUs only.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(run(&opts, postgres));
    if let Some(path) = &opts.json_file {
        std::fs::write(path, format!("{:#}\n", report.json(&opts))).expect("write the JSON report");
    }
    if opts.json {
        println!("{:#}", report.json(&opts));
    } else {
        report.print(&opts);
    }
}

/// Checks `--server-cpus` and `--client-cpus` against the CPUs this process may use, then
/// pins this (still the only) thread to the client CPUs.
fn pinning(opts: &Opts) -> Result<(), String> {
    let available =
        pin::Cpus::available().map_err(|e| format!("cannot read the CPU affinity: {e}"))?;
    if let Some(cpus) = &opts.server_cpus {
        cpus.check("--server-cpus", &available)?;
    }
    if let Some(cpus) = &opts.client_cpus {
        cpus.check("--client-cpus", &available)?;
        cpus.pin_this_thread()
            .map_err(|e| format!("cannot pin to CPUs {cpus}: {e}"))?;
    }
    if let (Some(s), Some(c)) = (&opts.server_cpus, &opts.client_cpus)
        && s.overlaps(c)
    {
        eprintln!("rsp-bench: note: --server-cpus {s} and --client-cpus {c} overlap");
    }
    Ok(())
}

async fn run(opts: &Opts, postgres: Option<(String, stats::Proc)>) -> Report {
    let pki = Pki::new();
    let mut report = Report::default();
    let steps = ALL.iter().filter(|w| opts.wants(w)).count() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(steps);
        b.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let pki_dir = pki.path().display().to_string();
    let data = registrar_data();
    let data_dir = data.path().display().to_string();
    let server_cpus = opts.server_cpus.as_ref();
    let mut registrar = ChildProc::start(&["registrar", &pki_dir, &data_dir, "5000"], server_cpus);
    let mut floor = ChildProc::start(&["floor", &pki_dir], server_cpus);
    report.cpus = report::Placement::read(opts, &registrar, &floor);
    // The keep-alive load starts a fresh etcd (as it starts a fresh registrar).
    let mut etcd_exe = None;
    let etcd = if opts.no_etcd {
        report.etcd_note = Some("etcd left out (--no-etcd)".into());
        None
    } else {
        match etcd::binary() {
            None => {
                let note = "etcd is not installed: the etcd columns are skipped \
                            (Debian: apt-get install -y etcd-server etcd-client)";
                eprintln!("rsp-bench: {note}");
                report.etcd_note = Some(note.into());
                None
            }
            Some(exe) => match etcd::Etcd::start(&exe, pki.path(), server_cpus).await {
                Ok(e) => {
                    etcd_exe = Some(exe);
                    Some(e)
                }
                Err(e) => {
                    eprintln!("rsp-bench: {e}");
                    report.etcd_note = Some(format!("etcd failed to start: {e}"));
                    None
                }
            },
        }
    };
    if opts.wants("resolve") {
        bar.set_message("resolutions");
        resolutions(
            opts,
            &pki,
            &mut registrar,
            &floor,
            etcd.as_ref(),
            &mut report,
            &bar,
        )
        .await;
        bar.inc(1);
    }
    if opts.wants("handshake") {
        bar.set_message("handshakes");
        handshakes(opts, &pki, &registrar, &floor, &mut report).await;
        bar.inc(1);
    }
    if opts.wants("churn") {
        bar.set_message("PE churn");
        report.churn = Some(churn(opts, &pki, &registrar).await);
        bar.inc(1);
    }
    if opts.wants("failover") {
        bar.set_message("failover");
        report.failover = Some(failover(opts, &pki, &registrar).await);
        bar.inc(1);
    }
    // Registrations last on this registrar: at the end of the storm tens of thousands of
    // PEs lose their connections at once, and their removal would load the measurements
    // that follow.
    if opts.wants("register") {
        bar.set_message("registrations");
        registrations(
            opts,
            &pki,
            &mut registrar,
            &floor,
            etcd.as_ref(),
            &mut report,
            &bar,
        )
        .await;
        bar.inc(1);
    }
    drop(etcd);
    report.registrar_rss = registrar.proc().rss_kib();
    registrar.stop();
    if let Some((url, postmaster)) = &postgres {
        bar.set_message("on PostgreSQL");
        on_postgres(opts, &pki, (url, *postmaster), &floor, &mut report, &bar).await;
    }
    let _ = floor.ask("stop");
    floor.stop();
    if opts.wants("keepalive") {
        bar.set_message(format!("keep-alive load, {} PEs", opts.pes));
        report.keep_alive.push(keep_alives(opts, &pki).await);
        if let Some(exe) = &etcd_exe {
            let leases = opts
                .etcd_leases
                .unwrap_or_else(|| opts.pes.min(ETCD_LEASES));
            bar.set_message(format!("keep-alive load, {leases} etcd leases"));
            match etcd::Etcd::start(exe, pki.path(), server_cpus).await {
                Ok(e) => report
                    .keep_alive
                    .push(etcd_keep_alives(opts, &e, leases).await),
                Err(e) => eprintln!("rsp-bench: a fresh etcd for the keep-alive load: {e}"),
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report
}

/// Resolutions and registrations again, against a registrar on a fresh PostgreSQL
/// database of the server `url` (the floor alongside again): rows `rsp-pg` and
/// `floor-pg` beside the SQLite registrar's, with the CPU time of the server's processes
/// (`postmaster` and its children) counted beside the registrar's.
async fn on_postgres(
    opts: &Opts,
    pki: &Pki,
    (url, postmaster): (&str, stats::Proc),
    floor: &ChildProc,
    report: &mut Report,
    bar: &ProgressBar,
) {
    let data = registrar_data();
    let (pki_dir, data_dir) = (
        pki.path().display().to_string(),
        data.path().display().to_string(),
    );
    let mut registrar = ChildProc::start_env(
        &["registrar", &pki_dir, &data_dir, "5000", "postgres"],
        opts.server_cpus.as_ref(),
        &[("RSP_TEST_POSTGRES", url)],
    );
    registrar.store = Some(postmaster);
    let (throughput, audit) = (report.throughput.len(), report.audit.len());
    if opts.wants("resolve") {
        resolutions(opts, pki, &mut registrar, floor, None, report, bar).await;
    }
    if opts.wants("register") {
        registrations(opts, pki, &mut registrar, floor, None, report, bar).await;
    }
    for (_, system, _) in &mut report.throughput[throughput..] {
        *system = if *system == "rsp" {
            "rsp-pg"
        } else {
            "floor-pg"
        };
    }
    report.audit_pg = report.audit.split_off(audit);
    registrar.stop();
}

/// A fresh data directory for a registrar child. Declare it before the child: locals drop
/// in reverse order, so the child is stopped (or killed) before its directory goes.
pub(crate) fn registrar_data() -> tempfile::TempDir {
    tempfile::tempdir().expect("data dir")
}
