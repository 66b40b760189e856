//! The machine a benchmark ran on, for its record: CPU model and load average (Linux `/proc`; a
//! placeholder elsewhere).

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
