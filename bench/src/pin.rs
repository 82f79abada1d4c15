//! CPU pinning (`--server-cpus`, `--client-cpus`): the servers under test (floor, rsp's
//! registrar, etcd) on some CPUs, the load generators on others, so that neither
//! preempts the other and latency tails are the server's own.
//!
//! Linux CPU affinity is per thread and inherited by the threads and processes a thread
//! creates. So: the load generators are pinned by pinning the main thread before the
//! tokio runtime exists (its workers inherit it; so do the failover measurement's PE
//! processes); a server child is spawned from a short-lived thread pinned to the server
//! CPUs, and its whole process, runtime included, inherits that. tokio sizes its runtime
//! by `available_parallelism`, which reads the affinity: a server on one CPU runs one
//! worker, as `taskset -c 1 enrpd run` would.
//!
//! `sched_setaffinity` through `nix` (safe wrapper of the system call; the crate forbids
//! unsafe code) rather than `taskset`: the load generators are threads of this process,
//! which an external command could only pin after they exist, and etcd and our own
//! children are pinned the same way, before `exec`, with no other program needed.

use std::fmt;
use std::io;
use std::process::{Child, Command};
use std::str::FromStr;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// A set of CPUs, written as taskset's `--cpu-list` writes them: `1`, `0-1`, `0,2-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cpus(Vec<usize>);

impl FromStr for Cpus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let cpu = |n: &str| {
                n.trim().parse::<usize>().map_err(|_| {
                    format!("{n:?} is not a CPU number (a list is like 1, 0-1 or 0,2-3)")
                })
            };
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (cpu(lo)?, cpu(hi)?);
                    if lo > hi {
                        return Err(format!("{part:?}: the range goes down"));
                    }
                    cpus.extend(lo..=hi);
                }
                None => cpus.push(cpu(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        if let Some(&too_high) = cpus.iter().find(|&&c| c >= CpuSet::count()) {
            return Err(format!("CPU {too_high} is beyond what Linux can name"));
        }
        Ok(Self(cpus))
    }
}

/// Back in the short form: `0,2-3`.
impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let lo = self.0[i];
            let mut hi = lo;
            while i + 1 < self.0.len() && self.0[i + 1] == hi + 1 {
                i += 1;
                hi = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if hi == lo {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

impl Cpus {
    /// How many CPUs.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether they overlap `other`'s.
    pub(crate) fn overlaps(&self, other: &Self) -> bool {
        self.0.iter().any(|c| other.0.contains(c))
    }

    /// The CPUs this process may run on now (its main thread's affinity).
    pub(crate) fn available() -> io::Result<Self> {
        let set = sched_getaffinity(Pid::from_raw(0))?;
        Ok(Self(
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect(),
        ))
    }

    /// Refuses an empty set and CPUs this process may not use (offline, or outside the
    /// affinity rsp-bench was started with).
    pub(crate) fn check(&self, flag: &str, available: &Self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err(format!("{flag}: no CPU given"));
        }
        match self.0.iter().find(|c| !available.0.contains(c)) {
            Some(c) => Err(format!(
                "{flag}: CPU {c} is not available here (rsp-bench may use CPUs {available})"
            )),
            None => Ok(()),
        }
    }

    fn set(&self) -> io::Result<CpuSet> {
        let mut set = CpuSet::new();
        for &c in &self.0 {
            set.set(c)?;
        }
        Ok(set)
    }

    /// Pins the calling thread, and so every thread and process it creates from now on.
    pub(crate) fn pin_this_thread(&self) -> io::Result<()> {
        sched_setaffinity(Pid::from_raw(0), &self.set()?)?;
        Ok(())
    }
}

/// Spawns `command`, on `cpus` if given (the whole process, from its first instruction),
/// else with this thread's affinity.
pub(crate) fn spawn(command: &mut Command, cpus: Option<&Cpus>) -> io::Result<Child> {
    let Some(cpus) = cpus else {
        return command.spawn();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            cpus.pin_this_thread()?;
            command.spawn()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The CPUs a process may run on, as the kernel reports them (`Cpus_allowed_list` in
/// /proc/PID/status): what the report's header states, read back rather than assumed.
pub(crate) fn allowed_list(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_taskset_writes_them() {
        let p = |s: &str| s.parse::<Cpus>().map(|c| c.0);
        assert_eq!(p("1"), Ok(vec![1]));
        assert_eq!(p("0-1"), Ok(vec![0, 1]));
        assert_eq!(p("3,0-1, 1"), Ok(vec![0, 1, 3]));
        assert!(p("").is_err());
        assert!(p("a").is_err());
        assert!(p("2-1").is_err());
        assert!(p("1-").is_err());
        assert!(p("100000").is_err());
        assert_eq!(
            "0,2-4,6".parse::<Cpus>().expect("list").to_string(),
            "0,2-4,6"
        );
    }

    #[test]
    fn a_cpu_outside_the_available_ones_is_refused() {
        let available: Cpus = "0-1".parse().expect("list");
        assert!(
            "1".parse::<Cpus>()
                .expect("list")
                .check("--server-cpus", &available)
                .is_ok()
        );
        let err = "2"
            .parse::<Cpus>()
            .expect("list")
            .check("--server-cpus", &available)
            .expect_err("CPU 2 is not available");
        assert!(err.contains("CPU 2 is not available"), "{err}");
    }

    /// A child spawned on a CPU set runs there, as the kernel reports it.
    #[test]
    fn a_child_spawned_on_cpus_runs_on_them() {
        let available = Cpus::available().expect("affinity");
        let one = Cpus(vec![*available.0.last().expect("a CPU")]);
        let mut child = spawn(Command::new("sleep").arg("5"), Some(&one)).expect("spawn");
        let allowed = allowed_list(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(allowed, Some(one.to_string()));
        // This thread kept its own affinity.
        assert_eq!(Cpus::available().expect("affinity"), available);
    }
}
