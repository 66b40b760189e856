//! What benchmarks read of the machine and their processes (Linux `/proc`): the CPU model and load
//! average they print with their tables (a placeholder elsewhere), and a process's peak and current
//! resident memory, whose peak this process can reset before a step it measures.

/// The CPU's model name from `/proc/cpuinfo` as `CPU: …` ("CPU model unknown" where it cannot be read).
#[must_use]
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| format!("CPU: {}", name.trim()))
        })
        .unwrap_or_else(|| "CPU model unknown".to_owned())
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg` ("unknown" where it cannot be read).
#[must_use]
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// A process's resident memory (Linux `/proc/<pid>/status`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentMemory {
    /// `VmHWM`: the peak since the process started, or since [`reset_peak_resident_memory`].
    pub peak: u64,
    /// `VmRSS`: resident now.
    pub current: u64,
}

/// The resident memory of process `pid` (`None`: this process); `None` where `/proc` cannot tell
/// (not Linux, or the process has ended).
#[must_use]
pub fn resident_memory(pid: Option<u32>) -> Option<ResidentMemory> {
    let file = pid.map_or_else(
        || "/proc/self/status".to_owned(),
        |pid| format!("/proc/{pid}/status"),
    );
    let status = std::fs::read_to_string(file).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(ResidentMemory {
        peak: field("VmHWM:")?,
        current: field("VmRSS:")?,
    })
}

/// Resets this process's peak resident memory to what is resident now (Linux
/// `/proc/self/clear_refs`), so that [`resident_memory`] then gives the peak of what follows.
///
/// # Errors
/// Where the kernel does not offer it.
pub fn reset_peak_resident_memory() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}
