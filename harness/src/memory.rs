//! A process's memory, read from `/proc`.

/// A line of `/proc/<pid>/status` in KiB, e.g. `status_kib(pid, "VmRSS")`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A process's memory, in KiB: resident in all, and the anonymous part
/// (heap, stacks); the rest is file-backed pages (code, mapped libraries).
pub struct Memory {
    /// All resident pages.
    pub rss_kib: u64,
    /// Resident pages backed by no file.
    pub anonymous_kib: u64,
}

/// Reads `/proc/<pid>/smaps_rollup`.
pub fn memory(pid: u32) -> Option<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("Rss:")?,
        anonymous_kib: field("Anonymous:")?,
    })
}

/// How many distinct deleted files ending in `.so` process `pid` still maps:
/// retired plugin copies whose file is gone.
pub fn retired_plugin_mappings(pid: u32) -> Option<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut paths: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.strip_suffix(" (deleted)"))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.ends_with(".so"))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    Some(paths.len())
}
