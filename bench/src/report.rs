//! The report: what one run measured, printed as Markdown tables or JSON, with the
//! targets of issue 9 and the machine it ran on.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::child::ChildProc;
use crate::cli::Opts;
use crate::failover::{FAILOVER_PES, Failover};
use crate::keep_alive::{PES_PER_CONN, Steady};
use crate::pin;
use crate::stats::Figures;

/// Everything measured in one run.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) etcd_note: Option<String>,
    /// (measurement, system, figures), e.g. ("resolve", "rsp", …).
    pub(crate) throughput: Vec<(&'static str, &'static str, Figures)>,
    /// Audit records committed, the operations they account for (a compacted resolution
    /// record counts its resolutions) / operations, per rsp measurement.
    pub(crate) audit: Vec<(&'static str, u64, u64, u64)>,
    /// The same, of the registrar on PostgreSQL (`--postgres`).
    pub(crate) audit_pg: Vec<(&'static str, u64, u64, u64)>,
    pub(crate) churn: Option<Figures>,
    pub(crate) failover: Option<Failover>,
    /// The keep-alive load: rsp, then etcd.
    pub(crate) keep_alive: Vec<Steady>,
    /// The main registrar's RSS and peak RSS at the end, KiB.
    pub(crate) registrar_rss: (u64, u64),
    /// Which CPUs each side had.
    pub(crate) cpus: Placement,
}

/// Which CPUs the servers and the load generators had, as the kernel reports them
/// (`Cpus_allowed_list`), read back after the children started rather than assumed from
/// the options.
#[derive(Default)]
pub(crate) struct Placement {
    /// Whether `--server-cpus` or `--client-cpus` was given.
    pub(crate) pinned: bool,
    pub(crate) registrar: String,
    pub(crate) floor: String,
    /// This process: the load generators.
    pub(crate) client: String,
    /// How many CPUs the registrar may use: no server's CPU time can exceed this many
    /// cores.
    pub(crate) server_cpus: usize,
    /// The load generators' tokio workers.
    pub(crate) client_workers: usize,
}

impl Placement {
    pub(crate) fn read(opts: &Opts, registrar: &ChildProc, floor: &ChildProc) -> Self {
        let allowed = |pid| pin::allowed_list(pid).unwrap_or_else(|| "?".to_owned());
        let registrar = allowed(registrar.proc().0);
        Self {
            pinned: opts.server_cpus.is_some() || opts.client_cpus.is_some(),
            server_cpus: registrar.parse::<pin::Cpus>().map_or(0, |c| c.len()),
            registrar,
            floor: allowed(floor.proc().0),
            client: allowed(std::process::id()),
            client_workers: std::thread::available_parallelism().map_or(0, usize::from),
        }
    }

    fn line(&self) -> String {
        let how = if self.pinned {
            "pinned (--server-cpus, --client-cpus)"
        } else {
            "not pinned: all share the machine's CPUs"
        };
        format!(
            "CPUs, {how}: the servers under test (rsp's registrar, etcd) on {} (the floor on \
             {}); the load generators on {} ({} tokio workers).",
            self.registrar, self.floor, self.client, self.client_workers
        )
    }

    /// A server that used more cores than it has CPUs means the CPU figures are wrong.
    fn check(&self, system: &str, f: &Figures) -> Option<String> {
        let cores = f.server_cores();
        (self.server_cpus > 0 && cores > self.server_cpus as f64 * 1.02).then(|| {
            format!(
                "**Check failed**: {system} used {cores:.2} cores on {} CPUs: its CPU figures are wrong.",
                self.server_cpus
            )
        })
    }

    fn json(&self) -> Value {
        json!({
            "pinned": self.pinned,
            "registrar": self.registrar,
            "floor": self.floor,
            "client": self.client,
            "client_workers": self.client_workers,
        })
    }
}

/// (measurement, target text, rsp/floor minimum, rsp/etcd minimum, p99 maximum in ms).
pub(crate) const TARGETS: &[(&str, f64, f64, f64)] =
    &[("resolve", 0.50, 10.0, 1.0), ("register", 0.25, 10.0, 5.0)];

impl Report {
    pub(crate) fn figures(&self, what: &str, system: &str) -> Option<&Figures> {
        self.throughput
            .iter()
            .find(|(w, s, _)| *w == what && *s == system)
            .map(|(_, _, f)| f)
    }

    /// rsp as a fraction of `other` in `what` (per second; per server core-second for
    /// handshakes).
    pub(crate) fn ratio(&self, what: &str, other: &str) -> Option<f64> {
        let rsp = self.figures(what, "rsp")?;
        let o = self.figures(what, other)?;
        Some(if what == "handshake" {
            rsp.per_server_core_second() / o.per_server_core_second()
        } else {
            rsp.rate() / o.rate()
        })
    }

    pub(crate) fn json(&self, opts: &Opts) -> Value {
        let mut throughput = serde_json::Map::new();
        for (what, system, f) in &self.throughput {
            let entry = throughput
                .entry((*what).to_owned())
                .or_insert_with(|| json!({}));
            entry[*system] = f.json();
        }
        for what in ["resolve", "register", "handshake"] {
            if let Some(e) = throughput.get_mut(what) {
                e["rsp_over_floor"] = json!(self.ratio(what, "floor"));
                e["rsp_over_etcd"] = json!(self.ratio(what, "etcd"));
            }
        }
        json!({
            "machine": machine(),
            "options": {
                "seconds": opts.seconds, "rounds": opts.rounds, "clients": opts.clients,
                "connections": opts.connections, "pes": opts.pes,
                "keep_alive_secs": opts.keep_alive_secs, "window_secs": opts.window_secs,
                "trials": opts.trials, "pus": opts.pus, "register_ids": opts.register_ids,
                "server_cpus": opts.server_cpus.as_ref().map(ToString::to_string),
                "client_cpus": opts.client_cpus.as_ref().map(ToString::to_string),
            },
            "cpus": self.cpus.json(),
            "etcd_note": self.etcd_note,
            "throughput": throughput,
            "audit": self.audit.iter().map(|(w, records, audited, ops)| json!({
                "measurement": w, "audit_records": records, "audited_operations": audited,
                "operations": ops,
            })).collect::<Vec<_>>(),
            "churn": self.churn.as_ref().map(Figures::json),
            "failover": self.failover.as_ref().map(|f| json!({
                "trials": f.trials,
                "pus_affected": f.affected,
                "pu_visible_ms": hist_json(&f.pu_visible),
                "registrar_visible_ms": hist_json(&f.registrar_visible),
            })),
            // Keyed by system, as `throughput` is.
            "keep_alive": self.keep_alive.iter().map(|s| (s.system.to_owned(), json!({
                "registrations": s.pes, "connections": s.connections,
                "setup_seconds": s.setup.as_secs_f64(),
                "rss_idle_kib": s.rss_idle, "rss_loaded_kib": s.rss_loaded,
                "rss_peak_kib": s.rss_peak, "bytes_per_registration": s.bytes_per_pe(),
                "window_seconds": s.window.as_secs_f64(),
                "server_cpu_cores": s.cores(),
                "keep_alives_per_second": s.keep_alive_rate(),
                "server_cpu_us_per_keep_alive": s.cpu_per_keep_alive_us(),
                "keep_alives_due_per_second": s.due,
                "lost": s.lost,
            }))).collect::<serde_json::Map<_, _>>(),
            "registrar_rss_kib": self.registrar_rss.0,
            "registrar_peak_rss_kib": self.registrar_rss.1,
        })
    }

    pub(crate) fn print(&self, opts: &Opts) {
        let m = machine();
        println!(
            "# rsp-bench: {} cores ({}), kernel {}\n",
            m["nproc"],
            m["cpu"].as_str().unwrap_or("?"),
            m["kernel"].as_str().unwrap_or("?")
        );
        println!(
            "{} clients per system; {} rounds of {} s, systems alternating within each \
             round, after a 1 s warm-up round. Latencies are per operation, closed loop.\n",
            opts.clients, opts.rounds, opts.seconds
        );
        println!("{}\n", self.cpus.line());
        if let Some(n) = &self.etcd_note {
            println!("Note: {n}\n");
        }
        for what in ["resolve", "register", "handshake"] {
            let rows: Vec<_> = self
                .throughput
                .iter()
                .filter(|(w, _, _)| *w == what)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let title = match what {
                "resolve" => format!(
                    "Resolutions, {} concurrent PUs (etcd: get by prefix; floor: 16 B → 128 B)",
                    opts.clients
                ),
                "register" => format!(
                    "Registrations, {} concurrent PEs, {} (etcd: lease grant + put)",
                    opts.clients,
                    match opts.register_ids {
                        0 => "each a new PE".to_owned(),
                        n => format!("each cycling through {n} PE IDs (re-registrations)"),
                    }
                ),
                _ => format!(
                    "Full mutual-TLS handshakes + one request, {} concurrent connections",
                    opts.connections
                ),
            };
            println!("## {title}\n");
            println!(
                "| system | ops/s | ops/s by round | p50 ms | p90 ms | p99 ms | max ms | server cores | ops per server core-s | rsp ÷ this |"
            );
            println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
            let mut checks = Vec::new();
            for (_, system, f) in rows {
                checks.extend(self.cpus.check(system, f));
                let ratio = if *system == "rsp" {
                    "—".to_owned()
                } else {
                    fmt_opt(self.ratio(what, system))
                };
                println!(
                    "| {system} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {ratio} |",
                    f.rate(),
                    f.rounds
                        .iter()
                        .map(|r| format!("{r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.ms(0.5),
                    f.ms(0.9),
                    f.ms(0.99),
                    f.max_ms(),
                    f.server_cores(),
                    f.per_server_core_second(),
                );
            }
            for c in checks {
                println!("\n{c}");
            }
            if let Some((_, records, audited, ops)) =
                self.audit.iter().find(|(w, _, _, _)| *w == what)
            {
                println!(
                    "\nrsp audit records committed: {records}, accounting for {audited} of {ops} operations (warm-up included)."
                );
            }
            if let (Some(pg), Some(floor)) =
                (self.figures(what, "rsp-pg"), self.figures(what, "floor-pg"))
            {
                println!(
                    "\nOn PostgreSQL: rsp-pg ÷ floor-pg {:.2}. CPU per operation, the whole system (SQLite runs inside the registrar; PostgreSQL's postmaster and all its processes are counted):\n",
                    pg.rate() / floor.rate()
                );
                println!(
                    "| store | registrar CPU µs / op | PostgreSQL CPU µs / op | registrar + PostgreSQL CPU µs / op | ops per CPU-second, whole system |"
                );
                println!("|---|---:|---:|---:|---:|");
                let sqlite = self.figures(what, "rsp").map(|f| f.cpu_us_per_op().0);
                if let Some(us) = sqlite {
                    println!(
                        "| SQLite | {us:.1} | — | {us:.1} | {:.0} |",
                        1e6 / us.max(1e-9)
                    );
                }
                let (registrar, whole) = pg.cpu_us_per_op();
                println!(
                    "| PostgreSQL | {registrar:.1} | {} | {} | {} |",
                    fmt_us(whole.map(|w| w - registrar)),
                    fmt_us(whole),
                    whole.map_or_else(|| "—".into(), |w| format!("{:.0}", 1e6 / w.max(1e-9)))
                );
            }
            if let Some((_, records, audited, ops)) =
                self.audit_pg.iter().find(|(w, _, _, _)| *w == what)
            {
                println!(
                    "\nrsp-pg audit records committed: {records}, accounting for {audited} of {ops} operations (warm-up included)."
                );
            }
            for &(w, floor_min, etcd_min, p99_max) in TARGETS {
                if w != what {
                    continue;
                }
                let rsp = self.figures(what, "rsp");
                println!(
                    "\nTargets: rsp ÷ floor {} (≥ {floor_min:.2}); rsp ÷ etcd {} (≥ {etcd_min:.0}); rsp p99 {} ms (≤ {p99_max})",
                    fmt_opt(self.ratio(what, "floor")),
                    fmt_opt(self.ratio(what, "etcd")),
                    fmt_opt(rsp.map(|f| f.ms(0.99))),
                );
            }
            if what == "handshake" {
                println!(
                    "\nTarget: rsp ÷ floor per server core-second {} (≥ 0.90)",
                    fmt_opt(self.ratio(what, "floor"))
                );
            }
            println!();
        }
        if let Some(f) = &self.churn {
            println!(
                "## PE churn: register a new PE + deregister it, {} connections\n",
                opts.connections
            );
            println!("| pairs/s | p50 ms | p90 ms | p99 ms | max ms | registrar cores |");
            println!("|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |\n",
                f.rate(),
                f.ms(0.5),
                f.ms(0.9),
                f.ms(0.99),
                f.max_ms(),
                f.server_cores()
            );
        }
        if let Some(f) = &self.failover {
            println!(
                "## Failover: {} PEs, {} PUs (request every 1 ms), {} trials, SIGKILL of the busiest PE\n",
                FAILOVER_PES, opts.pus, f.trials
            );
            println!("| what | samples | p50 ms | p90 ms | p99 ms | max ms |");
            println!("|---|---:|---:|---:|---:|---:|");
            for (name, h) in [
                (
                    "PU-visible: kill → next request served by another PE",
                    &f.pu_visible,
                ),
                (
                    "registrar-visible: kill → resolution without the PE",
                    &f.registrar_visible,
                ),
            ] {
                println!(
                    "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    h.len(),
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.9) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                    h.max() as f64 / 1e3,
                );
            }
            println!("\nTarget: PU-visible ≤ 50 ms.\n");
        }
        if !self.keep_alive.is_empty() {
            println!(
                "## Keep-alive load: {} PEs (etcd: leases with one key each), keep-alive every {} s, {} per connection, {} s window\n",
                self.keep_alive
                    .iter()
                    .map(|s| s.pes.to_string())
                    .collect::<Vec<_>>()
                    .join(" / "),
                opts.keep_alive_secs,
                PES_PER_CONN,
                opts.window_secs
            );
            println!(
                "| system | PEs / leases | connections | setup s | RSS idle MiB | RSS loaded MiB | RSS peak MiB | (loaded − idle) / PE | server cores | keep-alives/s answered | due | server CPU µs / keep-alive | lost |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for s in &self.keep_alive {
                println!(
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} B | {:.3} | {:.0} | {:.0} | {:.1} | {} |",
                    s.system,
                    s.pes,
                    s.connections,
                    s.setup.as_secs_f64(),
                    s.rss_idle as f64 / 1024.0,
                    s.rss_loaded as f64 / 1024.0,
                    s.rss_peak as f64 / 1024.0,
                    s.bytes_per_pe(),
                    s.cores(),
                    s.keep_alive_rate(),
                    s.due,
                    s.cpu_per_keep_alive_us(),
                    s.lost.map_or_else(|| "—".to_owned(), |l| l.to_string()),
                );
            }
            println!(
                "\nTargets (rsp): ≤ 2048 B per PE, ≤ 0.5 core. etcd: one gRPC keep-alive stream per lease (etcd-client 0.21), TTL 3 intervals.\n"
            );
        }
        if self.registrar_rss.0 > 0 {
            println!(
                "Main registrar at the end: RSS {:.1} MiB, peak {:.1} MiB.",
                self.registrar_rss.0 as f64 / 1024.0,
                self.registrar_rss.1 as f64 / 1024.0
            );
        }
    }
}

pub(crate) fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.2}"))
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.1}"))
}

pub(crate) fn hist_json(h: &Histogram<u64>) -> Value {
    json!({
        "samples": h.len(),
        "p50": h.value_at_quantile(0.5) as f64 / 1e3,
        "p90": h.value_at_quantile(0.9) as f64 / 1e3,
        "p99": h.value_at_quantile(0.99) as f64 / 1e3,
        "max": h.max() as f64 / 1e3,
    })
}

/// nproc, CPU model and kernel of this machine.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        // The machine's CPUs, not this process's share (--client-cpus narrows that).
        "nproc": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "cpu": cpu,
        "kernel": kernel,
    })
}
