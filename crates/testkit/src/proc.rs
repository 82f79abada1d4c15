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

    /// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
    /// parentheses), from field 3 of proc(5) (`state`, read as 0); empty if it is gone.
    fn stat(self) -> Vec<u64> {
        let stat = self.file("stat");
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        rest.split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect()
    }

    /// Clock ticks of the `stat` fields at these indices (after the command name), summed.
    fn ticks(self, fields: &[usize]) -> u64 {
        let f = self.stat();
        fields.iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum()
    }

    /// User plus system CPU time of all its threads (utime, stime: fields 14 and 15 of
    /// proc(5)).
    pub fn cpu(self) -> Duration {
        as_duration(self.ticks(&[11, 12]))
    }

    /// The CPU time of a server made of processes, such as PostgreSQL (the postmaster and
    /// a backend per connection): this process's, that of its children it has waited for
    /// (cutime, cstime: a backend that exited), and that of its children alive now. Read
    /// in that order, so that a child that exits in between is counted by the next reading
    /// instead of twice: the sum only grows.
    pub fn tree_cpu(self) -> Duration {
        let own = self.ticks(&[11, 12, 13, 14]);
        let children: u64 = self
            .children()
            .into_iter()
            .map(|c| c.ticks(&[11, 12, 13, 14]))
            .sum();
        as_duration(own + children)
    }

    /// Its children alive now: the processes whose parent PID (field 4) is this one.
    pub fn children(self) -> Vec<Self> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .map(Self)
            .filter(|p| p.stat().get(1) == Some(&u64::from(self.0)))
            .collect()
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

fn as_duration(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Proc;

    #[test]
    fn a_tree_counts_a_child_alive_and_after_it_exited() {
        let me = Proc::this();
        // A child that burns ~0.3 s of CPU: while it runs it is one of the children; once
        // waited for, its time is in this process's cutime/cstime.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        let mut seen = false;
        while child.try_wait().expect("try_wait").is_none() {
            seen |= me.children().iter().any(|c| c.0 == pid);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen, "the running child is listed");
        // Now only in cutime/cstime: the tree has at least the child's ~0.15 s beyond this
        // process's own time (read last, so that it can only have grown).
        let tree = me.tree_cpu();
        let own = me.cpu();
        assert!(
            tree >= own + Duration::from_millis(50),
            "the exited child's time counts: tree {tree:?}, own {own:?}"
        );
        assert!(
            me.children().iter().all(|c| c.0 != pid),
            "gone once waited for"
        );
    }
}
