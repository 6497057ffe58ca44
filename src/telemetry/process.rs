//! The standard `process_*` metrics, read from `/proc` on Linux (absent elsewhere).

/// What `/proc` says about this process.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub(crate) resident_memory_bytes: Option<u64>,
    pub(crate) virtual_memory_bytes: Option<u64>,
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) open_fds: Option<u64>,
    pub(crate) max_fds: Option<u64>,
    pub(crate) start_time_seconds: Option<f64>,
}

/// The kernel's clock tick for `/proc/<pid>/stat` times (`USER_HZ`): 100 on every Linux
/// architecture rolegate builds for.
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    /// This process now; what cannot be read is left out.
    pub(crate) fn read() -> Self {
        let mut out = ProcessStats::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            out.resident_memory_bytes = status_kib(&status, "VmRSS:");
            out.virtual_memory_bytes = status_kib(&status, "VmSize:");
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| boot_time(&s));
            let (cpu, start) = parse_stat(&stat);
            out.cpu_seconds = cpu;
            out.start_time_seconds = start.zip(boot).map(|(ticks, boot)| boot as f64 + ticks);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            out.open_fds = Some((dir.count() as u64).saturating_sub(1));
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            out.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok());
        }
        out
    }
}

/// A `Name:   1234 kB` line of `/proc/self/status`, in bytes.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// `btime` of `/proc/stat`: when the system booted, in Unix seconds.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// From `/proc/self/stat`: CPU seconds (user + system) and the start time in seconds after
/// boot. The command name (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
fn parse_stat(stat: &str) -> (Option<f64>, Option<f64>) {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (None, None);
    };
    // `rest` starts with field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = field(14)
        .zip(field(15))
        .map(|(u, s)| (u + s) as f64 / TICKS_PER_SECOND);
    let start = field(22).map(|t| t as f64 / TICKS_PER_SECOND);
    (cpu, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), (Some(3.0), Some(123.45)));
        assert_eq!(parse_stat("garbage"), (None, None));
    }

    #[test]
    fn status_lines_are_read_in_bytes() {
        let s = "Name:\trolegate\nVmSize:\t  2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), Some(1024 * 1024));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let p = ProcessStats::read();
        assert!(p.resident_memory_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.start_time_seconds.unwrap() > 1.0e9);
        assert!(p.cpu_seconds.is_some());
    }
}
