//! A process's CPU time and memory from /proc (Linux, proc(5)): how the benches measure a
//! server running in a child process, or themselves. Reads std files only; a process
//! that is gone (or a system without /proc) reads as zero.

use std::time::Duration;

/// A process, by its PID.
#[derive(Clone, Copy, Debug)]
pub struct Proc(pub u32);

impl Proc {
    /// The calling process.
    pub fn this() -> Self {
        Self(std::process::id())
    }

    fn file(self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.0)).unwrap_or_default()
    }

    /// User plus system CPU time of all its threads.
    pub fn cpu(self) -> Duration {
        let stat = self.file("stat");
        // After the command name (which may hold spaces and parentheses): utime and stime
        // are fields 14 and 15 of proc(5), so 12 and 13 after the `)`.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(self) -> (u64, u64) {
        let status = self.file("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// `getconf CLK_TCK` (the unit of /proc/PID/stat times), 100 if it cannot be asked; asked
/// once. Call it before a measurement so that the asking is not measured.
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}
