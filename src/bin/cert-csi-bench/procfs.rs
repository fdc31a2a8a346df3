//! Reading a process's memory and CPU time from /proc. The parsers are pure
//! so they are tested on fixed text; the readers only add the file read.

use thiserror::Error;

/// Clock ticks per second of `utime`/`stime` in /proc/PID/stat. The kernel
/// reports them in USER_HZ, which is 100 on every Linux architecture this
/// runs on (the ABI keeps it fixed whatever CONFIG_HZ is).
pub const USER_HZ: f64 = 100.0;

#[derive(Debug, Error)]
pub enum ProcError {
    #[error("reading {path}: {source}; is process {pid} still running?")]
    Read {
        pid: u32,
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: field {field} is missing or not a number; the kernel's format changed?")]
    Field { path: String, field: &'static str },
}

/// The value in KiB of a `Name:   1234 kB` line of /proc/PID/status.
pub fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `utime + stime` in clock ticks from the text of /proc/PID/stat. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after the last ')'.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are
    // at indexes 11 and 12 of what follows.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn read(pid: u32, file: &str) -> Result<(String, String), ProcError> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Read {
        pid,
        path: path.clone(),
        source,
    })?;
    Ok((path, text))
}

/// A /proc/PID/status field in KiB (e.g. `VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &'static str) -> Result<u64, ProcError> {
    let (path, text) = read(pid, "status")?;
    parse_status_kib(&text, field).ok_or(ProcError::Field { path, field })
}

/// CPU time (user + system) the process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let (path, text) = read(pid, "stat")?;
    parse_stat_cpu_ticks(&text)
        .map(|t| t as f64 / USER_HZ)
        .ok_or(ProcError::Field {
            path,
            field: "utime/stime",
        })
}

/// The directories of `pid`'s threads (`/proc/PID/task/TID`).
fn thread_dirs(pid: u32) -> Result<impl Iterator<Item = std::path::PathBuf>, ProcError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|source| ProcError::Read {
        pid,
        path: dir,
        source,
    })?;
    Ok(tasks.flatten().map(|task| task.path()))
}

/// CPU time in nanoseconds of every live thread of `pid`, from each
/// thread's `schedstat` (nanosecond resolution, where `stat` counts ticks
/// of 10 ms). Time of threads that exited in between is not counted.
pub fn cpu_nanos(pid: u32) -> Result<u64, ProcError> {
    // A thread may exit between the listing and the read.
    Ok(thread_dirs(pid)?
        .filter_map(|dir| std::fs::read_to_string(dir.join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// CPU time in seconds of the threads of `pid` named `name` (their
/// `comm`), summed; `None` when no thread has that name.
// benches/controller.rs includes this file and has no use for it.
#[allow(dead_code)]
pub fn thread_cpu_seconds(pid: u32, name: &str) -> Option<f64> {
    let mut found = None;
    for dir in thread_dirs(pid).ok()? {
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        if let Some(ticks) = parse_stat_cpu_ticks(&stat) {
            *found.get_or_insert(0.0) += ticks as f64 / USER_HZ;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    // Paths, not imports: benches/controller.rs includes this file, and
    // there the tests are not compiled, which would leave an import unused.
    #[test]
    fn status_fields_are_read_by_name() {
        let text = "Name:\tcert-csi\nVmHWM:\t   20480 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(super::parse_status_kib(text, "VmRSS:"), Some(12345));
        assert_eq!(super::parse_status_kib(text, "VmHWM:"), Some(20480));
        assert_eq!(super::parse_status_kib(text, "VmSwap:"), None);
    }

    #[test]
    fn stat_cpu_skips_a_name_with_spaces_and_parentheses() {
        // Fields 14 and 15 are 7 and 5; the name tries to shift them.
        let text = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 1 2 3";
        assert_eq!(super::parse_stat_cpu_ticks(text), Some(12));
        assert_eq!(super::parse_stat_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(super::status_kib(pid, "VmRSS:").unwrap() > 0);
        assert!(super::cpu_seconds(pid).unwrap() >= 0.0);
    }
}
