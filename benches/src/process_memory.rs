//! The current and peak resident memory of this process, read from Linux's
//! `/proc/self/status` (`VmRSS` and `VmHWM`, the resident set's high-water mark).

use cube_core::ByteSize;

/// Resident memory of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size now (`VmRSS`).
    pub resident: ByteSize,
    /// Largest resident set size since the process started (`VmHWM`).
    pub peak: ByteSize,
}

impl ProcessMemory {
    /// Reads the figures of this process.
    ///
    /// Returns `None` where `/proc/self/status` is missing (not Linux) or lacks either field.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        parse_status(&status)
    }
}

/// Parses the `VmRSS` and `VmHWM` lines of a `/proc/PID/status` text, given in kB.
fn parse_status(status: &str) -> Option<ProcessMemory> {
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(ByteSize(kib * 1024))
    };
    Some(ProcessMemory {
        resident: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse_as_kibibytes() {
        let status = "Name:\tc1m\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        let memory = parse_status(status).unwrap();
        assert_eq!(memory.peak, ByteSize(2048 * 1024));
        assert_eq!(memory.resident, ByteSize(1024 * 1024));
    }

    #[test]
    fn status_without_hwm_is_none() {
        assert_eq!(parse_status("VmRSS:\t1024 kB\n"), None);
    }

    #[test]
    fn this_process_has_figures() {
        let memory = ProcessMemory::read().expect("running on Linux");
        assert!(memory.peak >= memory.resident);
    }
}
