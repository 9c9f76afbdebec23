//! `tuneprobe trace`: turns the programs' ring-buffer records into named events.
//!
//! Records are checked here (never trusted to be well formed: a short or unknown record
//! is an error that is counted, not a crash), attributed to workloads through the
//! collector, as `snapshot` does, decoded by their signal's module, and rendered as JSON
//! or one text line.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;

pub(crate) use crate::signals::{Fields, Record};
use crate::{
    kernel::symbols::Symbols,
    signals::record::{Names, TraceContext},
    workloads::{cgroup::Hierarchy, identity::Identity},
};

/// One event as `trace --json` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct TraceEvent {
    pub signal: &'static str,
    /// RFC 3339, microseconds, UTC.
    pub time: String,
    #[serde(flatten)]
    pub workload: Identity,
    #[serde(flatten)]
    pub fields: Fields,
}

impl TraceEvent {
    /// Latency-like value of the event in milliseconds, for `--min-latency`.
    pub(crate) fn latency_ms(&self) -> Option<f64> {
        self.fields.latency_ms()
    }

    /// One line for people: time, signal, workload, details.
    pub(crate) fn to_line(&self) -> String {
        let time = self.time.get(11..23).unwrap_or(&self.time);
        format!(
            "{time} {:<11} {} {}",
            self.signal,
            self.workload.display_name(),
            self.fields.detail()
        )
    }
}

/// Names and renders records. Workload names are cached per cgroup for a second, so a
/// burst of events costs one lookup.
pub(crate) struct Decoder {
    symbols: Symbols,
    sys_root: std::path::PathBuf,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to date kernel timestamps.
    realtime_offset_ns: i128,
    names: HashMap<(Hierarchy, u64, u32), Identity>,
    devices: HashMap<u32, String>,
}

impl Decoder {
    pub(crate) fn new(symbols: Symbols) -> Self {
        Self {
            symbols,
            sys_root: std::path::PathBuf::from("/sys"),
            realtime_offset_ns: realtime_offset_ns(),
            names: HashMap::new(),
            devices: HashMap::new(),
        }
    }

    /// Forget cached names (call after the collector rescans).
    pub(crate) fn refresh(&mut self) {
        self.names.clear();
        self.realtime_offset_ns = realtime_offset_ns();
    }

    pub(crate) fn event(&mut self, names: &mut impl Names, record: &Record) -> TraceEvent {
        let header = record.header;
        let hierarchy = record.hierarchy();
        let netns = (header.netns != 0).then_some(header.netns);
        let mut workload = self
            .names
            .entry((hierarchy, header.cgroup_id, header.netns))
            .or_insert_with(|| names.identity_of(hierarchy, header.cgroup_id, netns))
            .clone();
        // What the kernel said, where naming found nothing more.
        workload.cgroup_id = workload
            .cgroup_id
            .or((header.cgroup_id != 0).then_some(header.cgroup_id));
        workload.netns = workload.netns.or(netns);
        let fields = record.fields(&mut TraceContext {
            probe: names.probe(),
            symbols: &self.symbols,
            sys_root: &self.sys_root,
            devices: &mut self.devices,
        });
        TraceEvent {
            signal: record.signal().trace_name(),
            time: self.wall_time(header.time_ns),
            workload,
            fields,
        }
    }

    fn wall_time(&self, monotonic_ns: u64) -> String {
        let ns = i128::from(monotonic_ns) + self.realtime_offset_ns;
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
        humantime::format_rfc3339_micros(time).to_string()
    }
}

fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::record::RecordError;

    #[test]
    fn records_are_checked_before_use() {
        use probe_common::{cpu_throttle::ThrottleEvent, trace::TraceKind};

        assert!(matches!(Record::parse(&[0; 8]), Err(RecordError::Short(8))));
        let mut bytes = vec![0u8; size_of::<ThrottleEvent>()];
        bytes[0] = 9;
        assert!(matches!(
            Record::parse(&bytes),
            Err(RecordError::UnknownKind(9))
        ));
        bytes[0] = TraceKind::Throttle as u8;
        assert_eq!(
            Record::parse(&bytes).unwrap().signal(),
            crate::signals::Signal::CpuThrottle
        );
        bytes[0] = TraceKind::Dns as u8;
        assert!(matches!(
            Record::parse(&bytes),
            Err(RecordError::Size { .. })
        ));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let event = TraceEvent {
            signal: "dns",
            time: "2026-01-01T00:00:00.000000Z".to_string(),
            workload: Identity {
                cgroup_id: Some(7),
                namespace: Some("shop".to_string()),
                pod: Some("api".to_string()),
                ..Identity::default()
            },
            fields: Fields::Dns(crate::signals::dns::TraceFields {
                qname: Some("a.test".to_string()),
                qtype: Some("A".to_string()),
                rcode: Some("NOERROR".to_string()),
                latency_ms: 1.5,
                resolver: "10.0.0.1".to_string(),
                transport: "udp",
                decode_error: None,
            }),
        };
        let json = serde_json::to_value(&event).unwrap();
        for field in [
            "signal",
            "time",
            "cgroup_id",
            "pod_uid",
            "container_id",
            "namespace",
            "pod",
            "container",
            "qname",
            "qtype",
            "rcode",
            "latency_ms",
            "resolver",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(json["qname"], "a.test");
        assert!(
            event
                .to_line()
                .contains("a.test A NOERROR 1.500ms via 10.0.0.1/udp")
        );
    }
}
