//! The standard process metrics every Prometheus client library exports (`process_*`, no
//! `portcullis_` prefix), read from `/proc/self` at scrape time. Elsewhere than Linux: none.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Reads the process's CPU time, memory and file descriptors when `/metrics` is scraped:
/// a few small reads under `/proc/self`, nothing kept in between.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    /// Fixed for the life of the process, so read once.
    #[cfg(target_os = "linux")]
    start_time: Option<f64>,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            start_time: linux::start_time(),
        }
    }
}

impl Collector for ProcessCollector {
    #[cfg(target_os = "linux")]
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        linux::encode(encoder, self.start_time)
    }

    #[cfg(not(target_os = "linux"))]
    fn encode(&self, _encoder: DescriptorEncoder) -> std::fmt::Result {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use procfs::WithCurrentSystemInfo;
    use procfs::process::{LimitValue, Process};
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Unit;

    /// Seconds since the epoch the process started at: boot time plus the start offset
    /// `/proc/self/stat` gives in clock ticks (what the Go client reports).
    pub(super) fn start_time() -> Option<f64> {
        let stat = Process::myself().ok()?.stat().ok()?;
        let boot = procfs::boot_time_secs().ok()?;
        Some(boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64)
    }

    /// Encodes what can be read now; a series whose file cannot be read is left out
    /// rather than reported as zero.
    pub(super) fn encode(
        mut encoder: DescriptorEncoder,
        start_time: Option<f64>,
    ) -> std::fmt::Result {
        let Ok(me) = Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = (stat.utime + stat.stime) as f64;
            let cpu = ConstCounter::new(ticks / procfs::ticks_per_second() as f64);
            cpu.encode(encoder.encode_descriptor(
                "cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            let resident = ConstGauge::new(stat.rss_bytes().get());
            resident.encode(encoder.encode_descriptor(
                "resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                resident.metric_type(),
            )?)?;
        }
        if let Ok(open) = me.fd_count() {
            let open = ConstGauge::new(open as u64);
            open.encode(encoder.encode_descriptor(
                "open_fds",
                "Number of open file descriptors",
                None,
                open.metric_type(),
            )?)?;
        }
        if let Ok(limits) = me.limits()
            && let LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            let max = ConstGauge::new(max);
            max.encode(encoder.encode_descriptor(
                "max_fds",
                "Maximum number of open file descriptors",
                None,
                max.metric_type(),
            )?)?;
        }
        if let Some(start) = start_time {
            let start = ConstGauge::new(start);
            start.encode(encoder.encode_descriptor(
                "start_time",
                "Start time of the process since the Unix epoch in seconds",
                Some(&Unit::Seconds),
                start.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
