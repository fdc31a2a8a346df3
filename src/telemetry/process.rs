//! The `process_*` metrics of Prometheus' standard process collector (the
//! ones client_golang, and so csi-driver's controller-runtime registry,
//! serves), read from `/proc/self` at each scrape.
//!
//! Names, types and meanings follow that collector: CPU time is user plus
//! system time in seconds (a counter); memory is the resident set and the
//! virtual size in bytes; file descriptors are those open now and the soft
//! `RLIMIT_NOFILE`; the start time is the kernel's boot time plus the
//! process's start in clock ticks after boot. A value that cannot be read
//! is left out of the scrape (and logged at debug) rather than reported as 0.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// Registers the process metrics in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
struct ProcessCollector;

/// One reading of `/proc/self`; `None` where a file could not be read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reading {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    /// `None` also when the soft limit is unlimited.
    pub max_fds: Option<f64>,
}

/// Reads this process's figures now.
pub fn read() -> Reading {
    let mut reading = Reading::default();
    let me = match procfs::process::Process::myself() {
        Ok(me) => me,
        Err(error) => {
            tracing::debug!(%error, "cannot read /proc/self; no process metrics");
            return reading;
        }
    };
    match me.stat() {
        Ok(stat) => {
            let ticks = procfs::ticks_per_second() as f64;
            reading.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            reading.resident_bytes = Some((stat.rss * procfs::page_size()) as f64);
            reading.virtual_bytes = Some(stat.vsize as f64);
            match procfs::boot_time_secs() {
                Ok(boot) => {
                    reading.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks)
                }
                Err(error) => tracing::debug!(%error, "cannot read the boot time"),
            }
        }
        Err(error) => tracing::debug!(%error, "cannot read /proc/self/stat"),
    }
    match me.fd_count() {
        Ok(open) => reading.open_fds = Some(open as f64),
        Err(error) => tracing::debug!(%error, "cannot count /proc/self/fd"),
    }
    match me.limits() {
        Ok(limits) => {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                reading.max_fds = Some(max as f64);
            }
        }
        Err(error) => tracing::debug!(%error, "cannot read /proc/self/limits"),
    }
    reading
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = read();
        if let Some(seconds) = reading.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 5] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                reading.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                reading.virtual_bytes,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                reading.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                reading.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                reading.max_fds,
            ),
        ];
        for (name, help, unit, value) in &gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(*value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_has_the_standard_names_and_types() {
        let mut registry = Registry::default();
        register(&mut registry);
        let text = crate::telemetry::metrics::encode(&registry);
        for (name, kind, sample) in [
            (
                "process_cpu_seconds",
                "counter",
                "process_cpu_seconds_total ",
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "process_resident_memory_bytes ",
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "process_virtual_memory_bytes ",
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "process_start_time_seconds ",
            ),
            ("process_open_fds", "gauge", "process_open_fds "),
            ("process_max_fds", "gauge", "process_max_fds "),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
            let line = text
                .lines()
                .find(|l| l.starts_with(sample))
                .unwrap_or_else(|| panic!("no {sample}sample: {text}"));
            let value: f64 = line[sample.len()..].parse().unwrap();
            assert!(value >= 0.0, "{line}");
        }
    }
}
