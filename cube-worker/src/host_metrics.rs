//! [`HostSampler`]: reads the host's memory, CPU, disk and load through sysinfo.
//!
//! This is the only module that imports sysinfo. Its calls block, because they read `/proc`
//! and call `statvfs`. So a sampler lives on a thread of its own, never on an actor's
//! arbiter (see [`crate::metrics_collector`]). CPU usage is the difference between two refreshes, so the
//! sampler keeps one long-lived `System` and the first sample after creation may read 0.

use std::path::{Path, PathBuf};

use cube_core::{ByteSize, HostMetrics, SharedClock};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// Failure to read host metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostMetricsError {
    /// sysinfo could not read the host.
    #[error("failed to read host {what}")]
    Read {
        /// The data being read, such as "memory".
        what: &'static str,
        /// sysinfo's error.
        #[source]
        source: sysinfo::Error,
    },
}

/// A long-lived reader of host metrics.
#[derive(Debug)]
pub struct HostSampler {
    system: System,
    disks: Disks,
    disk_path: PathBuf,
    clock: SharedClock,
}

impl HostSampler {
    /// Creates a sampler that reports the disk holding `disk_path` (such as `/` or the
    /// Docker data root) and stamps samples with `clock`.
    ///
    /// # Errors
    ///
    /// Returns [`HostMetricsError`] when sysinfo cannot read the host.
    pub fn new(
        disk_path: impl Into<PathBuf>,
        clock: SharedClock,
    ) -> Result<Self, HostMetricsError> {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::everything());
        let system =
            System::new_with_specifics(refresh).map_err(|source| HostMetricsError::Read {
                what: "memory and CPUs",
                source,
            })?;
        let disks = Disks::new_with_refreshed_list().map_err(|source| HostMetricsError::Read {
            what: "disks",
            source,
        })?;
        Ok(Self {
            system,
            disks,
            disk_path: disk_path.into(),
            clock,
        })
    }

    /// Refreshes and returns the host's metrics; `running_tasks` is left 0 for the worker
    /// to fill.
    pub fn sample(&mut self) -> HostMetrics {
        self.system.refresh_memory();
        self.system.refresh_cpu_usage();
        // `false` keeps disks that disappeared out of the list refresh: only sizes change.
        self.disks.refresh(false);

        let (disk_total, disk_available) = disk_holding(&self.disks, &self.disk_path)
            .map_or((0, 0), |disk| (disk.total_space(), disk.available_space()));
        let load = System::load_average()
            .map(|load| [load.one, load.five, load.fifteen])
            .unwrap_or_else(|error| {
                log::debug!("load average unavailable: {error}");
                [0.0; 3]
            });
        let cpu_usage = f64::from(self.system.global_cpu_usage()) / 100.0;

        HostMetrics {
            memory_total: ByteSize(self.system.total_memory()),
            memory_available: ByteSize(self.system.available_memory()),
            cpu_count: u32::try_from(self.system.cpus().len()).unwrap_or(u32::MAX),
            cpu_usage: cpu_usage.clamp(0.0, 1.0),
            disk_total: ByteSize(disk_total),
            disk_available: ByteSize(disk_available),
            load_average: load,
            running_tasks: 0,
            sampled_at: self.clock.now(),
        }
    }
}

/// Finds the disk whose mount point is the longest prefix of `path`.
fn disk_holding<'a>(disks: &'a Disks, path: &Path) -> Option<&'a sysinfo::Disk> {
    disks
        .iter()
        .filter(|disk| path.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len())
}

#[cfg(test)]
mod tests {
    use cube_core::clock::system_clock;

    use super::*;

    #[test]
    fn sample_reads_this_host() {
        let mut sampler = HostSampler::new("/", system_clock()).expect("sysinfo reads the host");
        let metrics = sampler.sample();
        assert!(metrics.memory_total.bytes() > 0);
        assert!(metrics.memory_available <= metrics.memory_total);
        assert!(metrics.cpu_count >= 1);
        assert!((0.0..=1.0).contains(&metrics.cpu_usage));
        assert!(metrics.disk_total.bytes() > 0, "no disk found holding /");
        assert!(metrics.disk_available <= metrics.disk_total);
    }
}
